"""telemetry: the remote access tools each device last reported present (sanctioned or not)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_inventory") as b:
        b.add_column(sa.Column("tools", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("device_inventory") as b:
        b.drop_column("tools")
