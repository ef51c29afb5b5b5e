"""Scheduling and observability: worker heartbeats and scheduler task bookkeeping.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def _ts(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "fairlane_workers",
        sa.Column("worker_id", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("processed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("in_progress", sa.Integer, nullable=False, server_default="0"),
        _ts("started_at", nullable=False),
        _ts("last_heartbeat_at", nullable=False),
    )
    op.create_index("ix_fairlane_workers_heartbeat", "fairlane_workers", ["last_heartbeat_at"])
    op.create_table(
        "fairlane_scheduler_tasks",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_leader", sa.String(128)),
        sa.Column("last_error", sa.Text),
        _ts("last_started_at"),
        _ts("last_success_at"),
        _ts("last_failure_at"),
    )


def downgrade() -> None:
    op.drop_table("fairlane_scheduler_tasks")
    op.drop_index("ix_fairlane_workers_heartbeat", table_name="fairlane_workers")
    op.drop_table("fairlane_workers")
