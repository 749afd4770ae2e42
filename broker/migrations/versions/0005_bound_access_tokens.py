"""drop access tokens sealed before they were bound to their connection and scope key

Revision ID: 0005_bound_access_tokens
Revises: 0004_audit_seq
Create Date: 2026-11-30 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_bound_access_tokens"
down_revision = "0004_audit_seq"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # Access tokens are short-lived caches of what the refresh token can mint again: deleting
    # the rows sealed under the old binding costs one refresh per connection at next use, and
    # leaves no row that a move to another connection or scope set could still open.
    op.execute(sa.text("DELETE FROM access_tokens"))


def downgrade() -> None:
    """Revert this revision."""
    # Rows sealed under the new binding do not open under the old code: drop them too.
    op.execute(sa.text("DELETE FROM access_tokens"))
