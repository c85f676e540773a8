"""alerts name their device; resolved alerts, findings and deliveries by alert indexed for retention

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as b:
        b.add_column(sa.Column("device_id", sa.String(length=32), nullable=True))
    op.create_index("ix_alerts_device_id", "alerts", ["device_id"])
    op.create_index("ix_alerts_resolved_at", "alerts", ["resolved_at"])
    op.create_index("ix_findings_resolved_at", "findings", ["resolved_at"])
    op.create_index("ix_deliveries_alert_id", "deliveries", ["alert_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_alert_id", table_name="deliveries")
    op.drop_index("ix_findings_resolved_at", table_name="findings")
    op.drop_index("ix_alerts_resolved_at", table_name="alerts")
    op.drop_index("ix_alerts_device_id", table_name="alerts")
    with op.batch_alter_table("alerts") as b:
        b.drop_column("device_id")
