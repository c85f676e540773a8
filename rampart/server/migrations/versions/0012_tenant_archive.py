"""tenants.archived_at: an archived tenant (issue 16)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("archived_at", sa.Float(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE … DROP COLUMN (SQLite 3.35+): a batch rebuild would drop ``tenants``,
    # which the foreign keys of every tenant-owned table refuse.
    op.drop_column("tenants", "archived_at")
