"""Gmail method allowlists of API clients (Gmail through the broker)

Revision ID: 0009_proxy_methods
Revises: 0008_risc_events
Create Date: 2026-11-30 07:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_proxy_methods"
down_revision = "0008_risc_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("gmail_methods", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("gmail_methods")
