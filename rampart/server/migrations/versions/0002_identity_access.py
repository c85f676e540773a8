"""identity and access: account state, step-up, tenant access settings, revocations, alerts

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as b:
        b.add_column(sa.Column("disabled_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("disabled_reason", sa.String(length=32), nullable=True))
        b.add_column(sa.Column("enabled_at", sa.Float(), nullable=True))
    with op.batch_alter_table("sessions") as b:
        b.add_column(sa.Column("step_up_at", sa.Float(), nullable=True))
    with op.batch_alter_table("tenants") as b:
        b.add_column(sa.Column("mass_action_limit", sa.Integer(), nullable=False,
                               server_default="10"))
        b.add_column(sa.Column("dormant_days", sa.Integer(), nullable=False, server_default="30"))
        b.add_column(sa.Column("allowed_networks", sa.Text(), nullable=False,
                               server_default="[]"))
    with op.batch_alter_table("grants") as b:
        b.add_column(sa.Column("revocation", sa.LargeBinary(), nullable=True))
        b.add_column(sa.Column("revoked_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("revoked_by", sa.String(length=64), nullable=True))
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
        b.create_index("ix_jobs_account_id", ["account_id"])
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.Float(), nullable=False),
        sa.Column("next_allowed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("dedup_key", sa.String(length=256), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("acked_by", sa.String(length=64), nullable=True),
        sa.Column("acked_at", sa.Float(), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_tenant_id", "alerts", ["tenant_id"])
    op.create_index("ix_alerts_dedup_key", "alerts", ["dedup_key"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("login_throttle")
    with op.batch_alter_table("jobs") as b:
        b.drop_index("ix_jobs_account_id")
        b.drop_column("account_id")
    with op.batch_alter_table("grants") as b:
        for c in ("revocation", "revoked_at", "revoked_by"):
            b.drop_column(c)
    with op.batch_alter_table("tenants") as b:
        for c in ("mass_action_limit", "dormant_days", "allowed_networks"):
            b.drop_column(c)
    with op.batch_alter_table("sessions") as b:
        b.drop_column("step_up_at")
    with op.batch_alter_table("accounts") as b:
        for c in ("disabled_at", "disabled_reason", "enabled_at"):
            b.drop_column(c)
