"""Worker threads in heartbeats: each queue's dispatch budget follows the threads consuming it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("fairlane_workers") as batch:
        batch.add_column(sa.Column("threads", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("fairlane_workers") as batch:
        batch.drop_column("threads")
