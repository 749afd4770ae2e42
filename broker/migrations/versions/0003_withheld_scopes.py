"""connections record the scopes the user withholds from jobs

Revision ID: 0003_withheld_scopes
Revises: 0002
Create Date: 2026-11-30 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_withheld_scopes"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # Existing rows withhold nothing; the default only fills them and is dropped again, as
    # the model (like granted_scopes) has no server default.
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("withheld_scopes", sa.JSON(), nullable=False, server_default="[]")
        )
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.alter_column("withheld_scopes", server_default=None)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("withheld_scopes")
