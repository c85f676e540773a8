"""pending_updates.security_candidate: the security fix, which may be older than the candidate (issue 16)

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows from before are filled by the device's next inventory; until then the candidate stands in.
    op.add_column("pending_updates", sa.Column("security_candidate", sa.String(256), nullable=False,
                                               server_default=""))


def downgrade() -> None:
    op.drop_column("pending_updates", "security_candidate")  # plain DROP COLUMN, as in 0012
