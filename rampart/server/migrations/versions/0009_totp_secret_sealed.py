"""accounts.totp_secret holds a sealed secret (issue 11): room for the AES-GCM text

The clear secrets of older versions are sealed at start-up, not here: the key
lives in the data directory, which migrations do not see
(rampart/server/totp_store.py).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite does not enforce VARCHAR lengths, and rebuilding ``accounts`` there
    # (batch mode) would cascade-delete its sessions and keys: PostgreSQL only.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("accounts", "totp_secret", type_=sa.String(length=128),
                        existing_type=sa.String(length=64), existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("accounts", "totp_secret", type_=sa.String(length=64),
                        existing_type=sa.String(length=128), existing_nullable=True)
