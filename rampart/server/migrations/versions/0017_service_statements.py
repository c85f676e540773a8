"""service_statements and incident_notices: the service statement and notification deadlines (issue 19)

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_statements",
        sa.Column("tenant_id", sa.String(80), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("services", sa.Text(), nullable=False),
        sa.Column("contact_name", sa.String(256), nullable=False),
        sa.Column("contact_target", sa.String(80),
                  sa.ForeignKey("notify_targets.id", ondelete="SET NULL"), nullable=True),
        sa.Column("deadline_s", sa.Integer(), nullable=False),
        sa.Column("incident_response", sa.Text(), nullable=False),
        sa.Column("recovery", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "incident_notices",
        sa.Column("alert_id", sa.String(80), primary_key=True),
        sa.Column("tenant_id", sa.String(80), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("target_id", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("deadline_s", sa.Integer(), nullable=False),
        sa.Column("notified_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("incident_notices")
    op.drop_table("service_statements")
