"""Hot path: a leaner jobs table, and worker threads in heartbeats.

Every state change of a job writes a new row version into each index whose columns or
predicate it touches, so each index that covers every row costs every transition:

* ``ix_fairlane_jobs_state`` (state, queue, enqueued_at) is dropped: every query by state
  uses a partial index (backlog, live, dispatched, finished) instead;
* the idempotency key's uniqueness becomes a partial unique index over the rows that have a
  key, so jobs sent without one never touch it.

Workers report their thread count, so each queue's dispatch budget follows the threads
consuming it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

_HAS_KEY = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_fairlane_jobs_state", table_name="fairlane_jobs")
    with op.batch_alter_table("fairlane_jobs") as batch:
        batch.drop_constraint("uq_fairlane_jobs_idempotency", type_="unique")
    op.create_index(
        "uq_fairlane_jobs_idempotency",
        "fairlane_jobs",
        ["tenant", "idempotency_key"],
        unique=True,
        postgresql_where=_HAS_KEY,
        sqlite_where=_HAS_KEY,
    )
    with op.batch_alter_table("fairlane_workers") as batch:
        batch.add_column(sa.Column("threads", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("fairlane_workers") as batch:
        batch.drop_column("threads")
    op.drop_index("uq_fairlane_jobs_idempotency", table_name="fairlane_jobs")
    with op.batch_alter_table("fairlane_jobs") as batch:
        batch.create_unique_constraint("uq_fairlane_jobs_idempotency", ["tenant", "idempotency_key"])
    op.create_index("ix_fairlane_jobs_state", "fairlane_jobs", ["state", "queue", "enqueued_at"])
