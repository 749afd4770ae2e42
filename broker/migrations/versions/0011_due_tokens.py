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

INDEX = "ix_access_tokens_expires_at"


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(op.f(INDEX), "access_tokens", ["expires_at"])
        return
    # Built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX blocks
    # every token write (each hand-out's refresh) for as long as it reads a million rows.
    # One left INVALID by an interrupted build is dropped first, so a rerun builds it anew.
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        op.create_index(op.f(INDEX), "access_tokens", ["expires_at"],
                        postgresql_concurrently=True)


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f(INDEX), table_name="access_tokens")
