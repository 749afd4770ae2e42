"""security events from Google (RISC), the connection hold and refresh-token identifiers

Revision ID: 0008_risc_events
Revises: 0007_client_certificates
Create Date: 2026-11-30 04:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.models

revision = "0008_risc_events"
down_revision = "0007_client_certificates"
branch_labels = None
depends_on = None

TOKEN_IDS = ("refresh_token_prefix_id", "refresh_token_hash_id", "refresh_token_hexhash_id")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "security_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("iss", sa.String(length=500), nullable=False),
        sa.Column("iat", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("subject", sa.String(length=400), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
        sa.UniqueConstraint("jti", name=op.f("uq_security_events_jti")),
    )
    op.create_index(op.f("ix_security_events_received_at"), "security_events", ["received_at"])
    op.create_table(
        "security_event_tenants",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["security_events.id"],
            name=op.f("fk_security_event_tenants_event_id_security_events"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"],
            name=op.f("fk_security_event_tenants_tenant_id_tenants"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", "tenant_id", name=op.f("pk_security_event_tenants")),
    )
    op.create_index(
        op.f("ix_security_event_tenants_tenant_id"), "security_event_tenants", ["tenant_id"]
    )
    # Existing connections carry no identifiers: their refresh tokens are sealed, and only a
    # new refresh token (a connect, or a refresh that rotates it) records them.
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("held_at", broker.models.UTCDateTime(timezone=True), nullable=True)
        )
        for name in TOKEN_IDS:
            batch_op.add_column(sa.Column(name, sa.String(length=64), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_connections_{name}"), [name])
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "end_sessions_on_credential_change", sa.Boolean(), nullable=False,
            server_default=sa.false(),
        ))
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.alter_column("end_sessions_on_credential_change", server_default=None)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("end_sessions_on_credential_change")
    with op.batch_alter_table("connections", schema=None) as batch_op:
        for name in TOKEN_IDS:
            batch_op.drop_index(batch_op.f(f"ix_connections_{name}"))
            batch_op.drop_column(name)
        batch_op.drop_column("held_at")
    op.drop_index(op.f("ix_security_event_tenants_tenant_id"), table_name="security_event_tenants")
    op.drop_table("security_event_tenants")
    op.drop_index(op.f("ix_security_events_received_at"), table_name="security_events")
    op.drop_table("security_events")
