"""The jobs table is vacuumed and analyzed after a fixed number of changes, not a fraction of it.

Every job leaves dead row versions behind (dispatch, start, finish) and dead entries in the
partial indexes the hot path reads first: the head of the backlog's claim index and the
dispatched index the admission round counts. Until a VACUUM removes them, every round walks
them: draining 100,000 jobs on a table never vacuumed, the round's first statement read about
1,200 buffers (2.6 ms) instead of about 30. PostgreSQL's defaults wait until a fifth of the
table is dead (200,000 row versions with 1,000,000 jobs kept) and analyze after a tenth changed;
here it is 10,000 row versions plus 2% of the table, for dead rows, for inserts (a flood gets
its statistics and its visibility map soon) and for ANALYZE.

PostgreSQL only (SQLite has no autovacuum). Where autovacuum is off for the whole server these
settings do nothing; the prepared statements' plans are refreshed anyway (see
``fairlane.ledger.database.replan_if_stale``).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"

_SETTINGS = {
    "autovacuum_vacuum_threshold": "10000",
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_threshold": "10000",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_threshold": "10000",
    "autovacuum_analyze_scale_factor": "0.02",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    options = ", ".join(f"{name} = {value}" for name, value in _SETTINGS.items())
    op.execute(f"ALTER TABLE fairlane_jobs SET ({options})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE fairlane_jobs RESET ({', '.join(_SETTINGS)})")
