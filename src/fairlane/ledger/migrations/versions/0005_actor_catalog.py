"""Actor catalog: the actors workers declare, for senders that do not declare them.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "fairlane_actors",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("declared_by", sa.String(128), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fairlane_actors")
