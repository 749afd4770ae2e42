"""audit events counted per tenant and hour, so the admin overview reads a few hundred rows

Revision ID: 0006_audit_hourly
Revises: 0005_bound_access_tokens
Create Date: 2026-11-30 04:00:00.000000

The worker folds chained audit events into these counts; the overview adds the few events
above the fold's watermark (a WorkerState row) live, so its charts cost the same at a million
audit rows as at a hundred. Existing events are folded by the worker's first pass.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from broker.models import UTCDateTime

revision = "0006_audit_hourly"
down_revision = "0005_bound_access_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "audit_hourly",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("hour", UTCDateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.String(length=60), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("google_ms_sum", sa.BigInteger(), nullable=False),
        sa.Column("google_ms_max", sa.Integer(), nullable=False),
        sa.Column("google_calls", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audit_hourly_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "hour", "action", "outcome", "reason", name=op.f("pk_audit_hourly")
        ),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("audit_hourly")
