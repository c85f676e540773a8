"""session_recordings: the devices' recordings of remote sessions (issue 13)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_recordings",
        sa.Column("job_id", sa.String(length=80), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("tenant_id", sa.String(length=80), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_session_recordings_tenant_id", "session_recordings", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_session_recordings_tenant_id", table_name="session_recordings")
    op.drop_table("session_recordings")
