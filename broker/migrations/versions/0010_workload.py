"""jobs without secrets: workload trust rules, private_key_jwt clients, used assertion ids

Revision ID: 0010_workload
Revises: 0009_proxy_methods
Create Date: 2026-11-30 07:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.models

revision = "0010_workload"
down_revision = "0009_proxy_methods"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("jwt_jwks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("jwks_url", sa.String(length=2000), nullable=True))
    op.create_table(
        "client_assertions",
        sa.Column("client_id", sa.String(length=40), nullable=False),
        sa.Column("jti_sha256", sa.String(length=64), nullable=False),
        sa.Column("expires_at", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"],
            name=op.f("fk_client_assertions_client_id_api_clients"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "jti_sha256", name=op.f("pk_client_assertions")),
    )
    op.create_index(op.f("ix_client_assertions_expires_at"), "client_assertions",
                    ["expires_at"])
    op.create_table(
        "workload_trusts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.String(length=40), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("jwks", sa.JSON(), nullable=True),
        sa.Column("audiences", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("users", sa.JSON(), nullable=False),
        sa.Column("max_lifetime", sa.Integer(), nullable=False),
        sa.Column("expires_at", broker.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", broker.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"],
            name=op.f("fk_workload_trusts_client_id_api_clients"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"],
            name=op.f("fk_workload_trusts_tenant_id_tenants"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workload_trusts")),
    )
    op.create_index(op.f("ix_workload_trusts_issuer"), "workload_trusts", ["issuer"])
    op.create_index(op.f("ix_workload_trusts_tenant_id"), "workload_trusts", ["tenant_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_workload_trusts_tenant_id"), table_name="workload_trusts")
    op.drop_index(op.f("ix_workload_trusts_issuer"), table_name="workload_trusts")
    op.drop_table("workload_trusts")
    op.drop_index(op.f("ix_client_assertions_expires_at"), table_name="client_assertions")
    op.drop_table("client_assertions")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("jwks_url")
        batch.drop_column("jwt_jwks")
