"""the worker finds due tokens by an index on their expiry, not by scanning every connection

Revision ID: 0011_due_tokens
Revises: 0010_workload
Create Date: 2026-11-30 16:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011_due_tokens"
down_revision = "0010_workload"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_index(op.f("ix_access_tokens_expires_at"), "access_tokens", ["expires_at"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_access_tokens_expires_at"), table_name="access_tokens")
