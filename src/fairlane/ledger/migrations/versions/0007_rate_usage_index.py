"""Rate-limit usage reads an index: the jobs charged to a key in the last minute.

``RateLimits.usage`` (each worker's heartbeat, per rate-limit key, and ``/rate-limits``)
counted them by scanning the whole jobs table, finished rows included: its cost grew with
retention (190 ms at 1,000,000 rows). A partial index over the rows that have a key only,
so jobs without one never touch it.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

_HAS_RATE_KEY = sa.text("rate_key IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_fairlane_jobs_rate_usage",
        "fairlane_jobs",
        ["rate_key", "dispatched_at"],
        postgresql_where=_HAS_RATE_KEY,
        sqlite_where=_HAS_RATE_KEY,
    )


def downgrade() -> None:
    op.drop_index("ix_fairlane_jobs_rate_usage", table_name="fairlane_jobs")
