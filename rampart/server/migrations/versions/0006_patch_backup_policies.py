"""patch policies with rings, pending-update ages, backup policies and backup results (issue 6)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patch_policies",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("rings", sa.Text(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("defer_s", sa.BigInteger(), nullable=False),
        sa.Column("reboot", sa.String(length=16), nullable=False),
        sa.Column("timeout_s", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_index("ix_patch_policies_tenant_id", "patch_policies", ["tenant_id"])
    op.create_table(
        "patch_cycles",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("policy_id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ring", sa.Integer(), nullable=False),
        sa.Column("ring_done_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["policy_id"], ["patch_policies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_patch_cycles_policy_id", "patch_cycles", ["policy_id"])
    op.create_index("ix_patch_cycles_tenant_id", "patch_cycles", ["tenant_id"])
    op.create_table(
        "patch_runs",
        sa.Column("cycle_id", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("ring", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=80), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("reboot_required", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["cycle_id"], ["patch_cycles.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("cycle_id", "device_id"),
    )
    op.create_table(
        "pending_updates",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("arch", sa.String(length=64), nullable=False),
        sa.Column("candidate", sa.String(length=256), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("security_since", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("device_id", "name", "arch"),
    )
    op.create_table(
        "device_patch_state",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reboot_required", sa.Boolean(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "backup_policies",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=False),
        sa.Column("every_s", sa.BigInteger(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("max_age_s", sa.BigInteger(), nullable=False),
        sa.Column("verify_max_age_s", sa.BigInteger(), nullable=False),
        sa.Column("retention", sa.Text(), nullable=False),
        sa.Column("timeout_s", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("last_job_id", sa.String(length=80), nullable=True),
        sa.Column("last_triggered_at", sa.Float(), nullable=True),
        sa.Column("trigger_error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index("ix_backup_policies_tenant_id", "backup_policies", ["tenant_id"])
    op.create_table(
        "backup_results",
        sa.Column("job_id", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=80), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("archive", sa.String(length=256), nullable=False),
        sa.Column("archive_ok", sa.Boolean(), nullable=False),
        sa.Column("nfiles", sa.BigInteger(), nullable=False),
        sa.Column("original_size", sa.BigInteger(), nullable=False),
        sa.Column("check_ok", sa.Boolean(), nullable=True),
        sa.Column("restore_ok", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("job_id", "device_id"),
    )
    op.create_index("ix_backup_results_tenant_id", "backup_results", ["tenant_id"])
    op.create_index("ix_backup_results_finished_at", "backup_results", ["finished_at"])


def downgrade() -> None:
    for name in ("backup_results", "backup_policies", "device_patch_state", "pending_updates",
                 "patch_runs", "patch_cycles", "patch_policies"):
        op.drop_table(name)
