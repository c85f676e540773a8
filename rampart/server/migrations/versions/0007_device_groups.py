"""device groups: named sets of a tenant's devices that patch rings may name

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_groups",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_index("ix_device_groups_tenant_id", "device_groups", ["tenant_id"])
    op.create_table(
        "device_group_members",
        sa.Column("group_id", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["device_groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("group_id", "device_id"),
    )
    op.create_index("ix_device_group_members_device_id", "device_group_members", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_device_group_members_device_id", table_name="device_group_members")
    op.drop_table("device_group_members")
    op.drop_index("ix_device_groups_tenant_id", table_name="device_groups")
    op.drop_table("device_groups")
