"""indexes for the console's device list and dashboard (issue 14)

The device list searches, filters and sorts one tenant's devices in the store
(LIMIT/OFFSET), and the dashboard counts a tenant's live alerts by severity:
these composite indexes keep both independent of the fleet's size.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_tenant_hostname", "devices", ["tenant_id", "hostname"])
    op.create_index("ix_devices_tenant_status", "devices", ["tenant_id", "status"])
    op.create_index("ix_devices_tenant_last_seen", "devices", ["tenant_id", "last_seen"])
    op.create_index("ix_alerts_tenant_status_severity", "alerts", ["tenant_id", "status", "severity"])


def downgrade() -> None:
    op.drop_index("ix_alerts_tenant_status_severity", table_name="alerts")
    op.drop_index("ix_devices_tenant_last_seen", table_name="devices")
    op.drop_index("ix_devices_tenant_status", table_name="devices")
    op.drop_index("ix_devices_tenant_hostname", table_name="devices")
