"""directory_audit: tenants' directories (bind password sealed) and their audit findings (issue 19, G3)

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directories",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("tenant_id", sa.String(80), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("url", sa.String(512), nullable=False),
        sa.Column("starttls", sa.Boolean(), nullable=False),
        sa.Column("bind_dn", sa.String(512), nullable=False),
        sa.Column("base_dn", sa.String(512), nullable=False),
        sa.Column("ca_cert", sa.Text(), nullable=True),
        sa.Column("pin_sha256", sa.String(64), nullable=True),
        sa.Column("password_sealed", sa.Text(), nullable=False),
        sa.Column("inactive_days", sa.Integer(), nullable=False),
        sa.Column("privileged_groups", sa.Text(), nullable=False),
        sa.Column("every_s", sa.Integer(), nullable=False),
        sa.Column("next_run_at", sa.Float(), nullable=False, index=True),
        sa.Column("last_run_at", sa.Float(), nullable=True),
        sa.Column("last_status", sa.String(16), nullable=False),
        sa.Column("last_detail", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_table(
        "directory_findings",
        sa.Column("directory_id", sa.String(80), sa.ForeignKey("directories.id"), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("tenant_id", sa.String(80), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("account", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True, index=True),
    )


def downgrade() -> None:
    op.drop_table("directory_findings")
    op.drop_table("directories")
