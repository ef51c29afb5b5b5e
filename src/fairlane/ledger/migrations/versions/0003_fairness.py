"""Fairness: tenant caps, lane credits, rate-limit state, per-tenant claim order.

The dispatch budget is now counted from dispatched rows (an index), not kept in a counter
that every job start had to update.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_BACKLOG = sa.text("state IN ('pending', 'retrying')")
_DISPATCHED = sa.text("state = 'dispatched'")


def upgrade() -> None:
    with op.batch_alter_table("fairlane_jobs") as batch:
        batch.add_column(sa.Column("rate_key", sa.String(255)))
        batch.add_column(sa.Column("rate_tokens", sa.Float))
    op.create_index(
        "ix_fairlane_jobs_tenant_claim",
        "fairlane_jobs",
        ["queue", "tenant", "lane_rank", "stride_pass", "id"],
        postgresql_where=_BACKLOG,
        sqlite_where=_BACKLOG,
    )
    op.create_index(
        "ix_fairlane_jobs_dispatched",
        "fairlane_jobs",
        ["queue"],
        postgresql_where=_DISPATCHED,
        sqlite_where=_DISPATCHED,
    )
    with op.batch_alter_table("fairlane_queues") as batch:
        batch.drop_column("in_flight")
    with op.batch_alter_table("fairlane_lanes") as batch:
        batch.add_column(sa.Column("credit", sa.Float, nullable=False, server_default="0"))
    with op.batch_alter_table("fairlane_tenants") as batch:
        batch.add_column(sa.Column("max_running", sa.Integer))
    op.create_table(
        "fairlane_rate_limits",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("requests_tat", sa.Float, nullable=False, server_default="0"),
        sa.Column("tokens_tat", sa.Float, nullable=False, server_default="0"),
        sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("fairlane_rate_limits")
    with op.batch_alter_table("fairlane_tenants") as batch:
        batch.drop_column("max_running")
    with op.batch_alter_table("fairlane_lanes") as batch:
        batch.drop_column("credit")
    with op.batch_alter_table("fairlane_queues") as batch:
        batch.add_column(sa.Column("in_flight", sa.Integer, nullable=False, server_default="0"))
    op.drop_index("ix_fairlane_jobs_dispatched", "fairlane_jobs")
    op.drop_index("ix_fairlane_jobs_tenant_claim", "fairlane_jobs")
    with op.batch_alter_table("fairlane_jobs") as batch:
        batch.drop_column("rate_tokens")
        batch.drop_column("rate_key")
