"""The initial ledger: jobs, admission budget, stride state, tenants, ingested records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

_BACKLOG = sa.text("state IN ('pending', 'retrying')")
_FINAL = sa.text("state IN ('succeeded', 'dead', 'cancelled')")
_LIVE = sa.text("state IN ('dispatched', 'running')")


def _ts(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "fairlane_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("lane", sa.String(32), nullable=False),
        sa.Column("lane_rank", sa.SmallInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stride_pass", sa.Float, nullable=False),
        sa.Column("cost", sa.Float, nullable=False, server_default="1"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("progress", sa.JSON),
        sa.Column("result", sa.JSON),
        sa.Column("result_path", sa.Text),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_traceback", sa.Text),
        _ts("enqueued_at", nullable=False),
        _ts("next_run_at", nullable=False),
        _ts("dispatched_at"),
        _ts("started_at"),
        _ts("finished_at"),
        _ts("updated_at", nullable=False),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_fairlane_jobs_idempotency"),
    )
    op.create_index(
        "ix_fairlane_jobs_claim",
        "fairlane_jobs",
        ["queue", "lane_rank", "stride_pass", "id"],
        postgresql_where=_BACKLOG,
        sqlite_where=_BACKLOG,
    )
    op.create_index("ix_fairlane_jobs_state", "fairlane_jobs", ["state", "queue", "enqueued_at"])
    op.create_index("ix_fairlane_jobs_tenant", "fairlane_jobs", ["tenant", "enqueued_at", "id"])
    op.create_index(
        "ix_fairlane_jobs_cleanup",
        "fairlane_jobs",
        ["state", "finished_at"],
        postgresql_where=_FINAL,
        sqlite_where=_FINAL,
    )
    op.create_index(
        "ix_fairlane_jobs_live",
        "fairlane_jobs",
        ["state", "dispatched_at"],
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    op.create_table(
        "fairlane_queues",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("in_flight", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "fairlane_lanes",
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("lane", sa.String(32), primary_key=True),
        sa.Column("virtual_time", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "fairlane_tenant_passes",
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("lane", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("last_pass", sa.Float, nullable=False),
    )
    op.create_table(
        "fairlane_tenants",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False, server_default="1"),
    )
    op.create_table(
        "fairlane_ingested_records",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("record_key", sa.String(255)),
        sa.Column("data", sa.JSON, nullable=False),
        _ts("ingested_at", nullable=False),
    )
    op.create_index(
        "ix_fairlane_ingested_records_tenant", "fairlane_ingested_records", ["tenant", "record_key"]
    )


def downgrade() -> None:
    for table in (
        "fairlane_ingested_records",
        "fairlane_tenants",
        "fairlane_tenant_passes",
        "fairlane_lanes",
        "fairlane_queues",
        "fairlane_jobs",
    ):
        op.drop_table(table)
