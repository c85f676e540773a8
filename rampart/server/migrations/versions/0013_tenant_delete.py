"""devices.retired_at and deleted_tenants: deleting a tenant, retention of retired devices (issue 16)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("retired_at", sa.Float(), nullable=True))
    # Devices retired before this column existed count from the upgrade: retention never
    # removes a device's records sooner than its period after the operator could see it coming.
    op.execute(sa.text("UPDATE devices SET retired_at = :now WHERE status = 'retired'")
               .bindparams(now=time.time()))
    op.create_table(
        "deleted_tenants",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=False),
        sa.Column("deleted_by", sa.String(64), nullable=False),
        sa.Column("audit_until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deleted_tenants")
    op.drop_column("devices", "retired_at")  # plain DROP COLUMN, as in 0012
