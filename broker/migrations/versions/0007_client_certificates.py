"""Certificates: API clients authenticate with them (RFC 8705); webhooks present one

Revision ID: 0007_client_certificates
Revises: 0006_audit_hourly
Create Date: 2026-11-30 04:20:00.000000

Existing clients keep `client_secret_basic`; existing webhooks present no certificate. A CA is pinned by the SHA-256 of its public key,
not by its name: two CAs may share a distinguished name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.models

revision = "0007_client_certificates"
down_revision = "0006_audit_hourly"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "client_cas",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("not_after", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_client_cas_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_cas")),
        sa.UniqueConstraint("tenant_id", "spki_sha256", name=op.f("uq_client_cas_tenant_id")),
    )
    op.create_index(op.f("ix_client_cas_tenant_id"), "client_cas", ["tenant_id"])
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("auth_method", sa.String(length=32), nullable=False,
                                   server_default="client_secret_basic"))
        batch.add_column(sa.Column("tls_ca_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("tls_match", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tls_match_value", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("tls_certificates", sa.JSON(), nullable=False,
                                   server_default="[]"))
        batch.create_foreign_key(op.f("fk_api_clients_tls_ca_id_client_cas"), "client_cas",
                                 ["tls_ca_id"], ["id"], ondelete="RESTRICT")
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("client_cert", sa.Text(), nullable=True))
        batch.add_column(sa.Column("client_key", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("client_key")
        batch.drop_column("client_cert")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_constraint(op.f("fk_api_clients_tls_ca_id_client_cas"), type_="foreignkey")
        for column in ("tls_certificates", "tls_match_value", "tls_match", "tls_ca_id",
                       "auth_method"):
            batch.drop_column(column)
    op.drop_index(op.f("ix_client_cas_tenant_id"), table_name="client_cas")
    op.drop_table("client_cas")
