"""sign-in transactions name the tenant they were started for

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 00:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # Batch mode: SQLite can add a foreign key only by rebuilding the table.
    with op.batch_alter_table("oauth_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signin_tenant_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_oauth_transactions_signin_tenant_id_tenants"),
            "tenants",
            ["signin_tenant_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("oauth_transactions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_oauth_transactions_signin_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_column("signin_tenant_id")
