"""Typed models of the broker's data (DESIGN §4) and the shared column types."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column
from sqlalchemy.sql import ColumnElement

from broker.clock import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEFAULT_OFFERED_SCOPES = [
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://www.googleapis.com/auth/gmail.compose",
    "https://www.googleapis.com/auth/gmail.labels",
    "https://www.googleapis.com/auth/gmail.metadata",
]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Store aware UTC datetimes; SQLite keeps no zone, so reattach UTC on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        moment: dt.datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with the naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime,
        uuid.UUID: Uuid,
        bytes: LargeBinary,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


def new_id() -> uuid.UUID:
    """Return a random UUID, made by the application so rows have ids before sealing."""
    return uuid.uuid4()


def tenant_is(
    column: InstrumentedAttribute[uuid.UUID | None], tenant_id: uuid.UUID | None
) -> ColumnElement[bool]:
    """Match a nullable tenant column to a tenant, or to the system's rows when None."""
    # `= NULL` is never true in SQL: the system's rows need IS NULL.
    return column.is_(None) if tenant_id is None else column == tenant_id


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    allow_consumer_accounts: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TenantDomain(Base):
    """One Workspace domain of a tenant; the primary key makes a domain belong to one tenant."""

    __tablename__ = "tenant_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )


class Policy(Base):
    __tablename__ = "policies"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    session_max_age: Mapped[int] = mapped_column(default=8 * 3600)
    session_idle_timeout: Mapped[int] = mapped_column(default=30 * 60)
    lock_session_to_ip: Mapped[bool] = mapped_column(default=False)
    login_ip_ranges: Mapped[list[str]] = mapped_column(default=list)
    token_ip_ranges: Mapped[list[str]] = mapped_column(default=list)
    handout_login_max_age: Mapped[int | None] = mapped_column(default=None)
    keep_connected: Mapped[bool] = mapped_column(default=False)
    retention_days: Mapped[int | None] = mapped_column(default=None)
    offered_scopes: Mapped[list[str]] = mapped_column(
        default=lambda: list(DEFAULT_OFFERED_SCOPES)
    )
    allow_broader_tokens: Mapped[bool] = mapped_column(default=False)
    # Google's `account-credential-change-required` event ends the user's sessions when set.
    end_sessions_on_credential_change: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    google_sub: Mapped[str | None] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(10), default="member")
    status: Mapped[str] = mapped_column(String(10), default="invited")
    last_login_at: Mapped[dt.datetime | None]
    last_seen_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BrowserSession(Base):
    __tablename__ = "browser_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ip: Mapped[str] = mapped_column(String(45))
    user_agent: Mapped[str] = mapped_column(String(400), default="")
    ended_at: Mapped[dt.datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(20))


class OAuthTransaction(Base):
    __tablename__ = "oauth_transactions"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_binding_hash: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(10))
    code_verifier: Mapped[bytes]
    nonce: Mapped[str] = mapped_column(String(100))
    requested_scopes: Mapped[list[str]] = mapped_column(default=list)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The tenant a sign-in was started for (/auth/login?tenant=SLUG); apart from tenant_id,
    # which chooses the sealing key: a sign-in's verifier stays under the system key.
    signin_tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    prompt: Mapped[str | None] = mapped_column(String(40))
    next: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]


class Connection(Base):
    __tablename__ = "connections"
    __table_args__ = (
        Index("ix_connections_tenant_status", "tenant_id", "status"),
        # Room on each page, so the frequent last_used_at and refresh updates stay HOT (no
        # new index entries). The hand-out touches a connection at most once a minute.
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    google_sub: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320))
    granted_scopes: Mapped[list[str]] = mapped_column(default=list)
    # Granted at Google but unticked by the user: Google keeps earlier grants, so only the
    # broker can honour the choice. Never handed out; jobs may use granted minus these.
    withheld_scopes: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(20), default="active")
    status_reason: Mapped[str | None] = mapped_column(String(40))
    refresh_token: Mapped[bytes | None]
    refresh_lease_until: Mapped[dt.datetime | None]
    refresh_lease_owner: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(default=0)
    last_refresh_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    next_retry_at: Mapped[dt.datetime | None]
    revocation_pending: Mapped[bool] = mapped_column(default=False)
    # Last refresh caused by a job's `rejected_token`: at most one per cooldown.
    rejected_refresh_at: Mapped[dt.datetime | None]
    # Google disabled the account (RISC `account-disabled`): when, by the event's own time.
    # Hand-outs refuse while set; an `account-enabled` issued later releases it.
    held_at: Mapped[dt.datetime | None]
    # How Google names the refresh token in a `token-revoked` event (broker.keys
    # refresh_token_ids): digests only, never the token or its prefix in clear.
    refresh_token_prefix_id: Mapped[str | None] = mapped_column(String(64), index=True)
    refresh_token_hash_id: Mapped[str | None] = mapped_column(String(64), index=True)
    refresh_token_hexhash_id: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AccessToken(Base):
    __tablename__ = "access_tokens"

    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    scope_key: Mapped[str] = mapped_column(String(1000), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_id)
    token: Mapped[bytes]
    scopes: Mapped[list[str]] = mapped_column(default=list)
    # Indexed: the worker walks the tokens about to expire (an index range), not every grant.
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    obtained_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiClient(Base):
    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    previous_secret_sha256: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[dt.datetime | None]
    allowed_scopes: Mapped[list[str]] = mapped_column(default=list)
    allowed_ip_ranges: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    # Exactly one way to authenticate (RFC 8705 names): client_secret_basic,
    # tls_client_auth (a CA of the tenant and one leaf name) or self_signed_tls_client_auth.
    auth_method: Mapped[str] = mapped_column(String(32), default="client_secret_basic")
    tls_ca_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("client_cas.id", ondelete="RESTRICT")
    )
    # subject_dn | san_dns | san_uri | san_ip | san_email, and the exact value to match.
    tls_match: Mapped[str | None] = mapped_column(String(16))
    tls_match_value: Mapped[str | None] = mapped_column(String(512))
    # Pinned self-signed certificates (PEM), at most two so one can replace the other.
    tls_certificates: Mapped[list[str]] = mapped_column(default=list)
    # Gmail methods the client may call through /proxy/ by discovery id; None = what its
    # scopes permit (issue 13 item 3).
    gmail_methods: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # private_key_jwt (RFC 7523 §2.2): the client's public keys as a pinned JWK Set, or the
    # https URL of its JWK Set; the broker never holds the private key.
    jwt_jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    jwks_url: Mapped[str | None] = mapped_column(String(2000))


class ClientAssertion(Base):
    """A private_key_jwt assertion's `jti`, kept until the assertion expires: single use."""

    __tablename__ = "client_assertions"

    client_id: Mapped[str] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True
    )
    # SHA-256 of the jti: fixed width whatever the client sends.
    jti_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class WorkloadTrust(Base):
    """A rule that lets a platform's signed identity (a workload JWT) act as an API client."""

    __tablename__ = "workload_trusts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id", ondelete="CASCADE"))
    # Exact `iss`; rules are chosen by it before any signature is checked.
    issuer: Mapped[str] = mapped_column(String(500), index=True)
    # A pinned JWK Set; None: the keys the issuer's discovery document names.
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    audiences: Mapped[list[str]] = mapped_column(default=list)
    # Exact `sub`; None only with an explicit any-subject.
    subject: Mapped[str | None] = mapped_column(String(500))
    # Exact values at dotted claim paths, e.g. {"repository_id": "42"}.
    claims: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # User ids the job may act for, or ["*"].
    users: Mapped[list[str]] = mapped_column(default=list)
    max_lifetime: Mapped[int] = mapped_column(default=3600)
    expires_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ClientCA(Base):
    """A certificate authority a tenant trusts for its clients, pinned by its key (SPKI)."""

    __tablename__ = "client_cas"
    __table_args__ = (UniqueConstraint("tenant_id", "spki_sha256"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    spki_sha256: Mapped[str] = mapped_column(String(64))
    pem: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(512))
    not_after: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[bytes]
    events: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Two-way TLS: the certificate (PEM chain) deliveries present, and its key sealed.
    client_cert: Mapped[str | None] = mapped_column(Text)
    client_key: Mapped[bytes | None]


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    last_status: Mapped[str | None] = mapped_column(String(200))
    delivered_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DataKey(Base):
    """A wrapped data key: a tenant's, or the system key when tenant_id is null."""

    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int]
    wrapped: Mapped[bytes]
    master_key_id: Mapped[str] = mapped_column(String(64), index=True)
    seal_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[dt.datetime | None]


class AuditKey(Base):
    __tablename__ = "audit_keys"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    wrapped: Mapped[bytes]
    master_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# The chain of events that name no tenant (sign-in refusals, tenant deletions, key rotation).
SYSTEM_CHAIN = uuid.UUID(int=0)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_at", "tenant_id", "at"),
        Index("ix_audit_events_chain", "chain_id", "chain_seq"),
        Index("ix_audit_events_seq", "seq", unique=True),
        # The chainer's two questions: what waits after the head, and what waits below it.
        Index("ix_audit_events_unchained", "chain_seq", "seq"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL")
    )
    # Insertion order, assigned by the database in the INSERT itself: an identity column on
    # PostgreSQL, an AFTER INSERT trigger on SQLite (migration 0003 says why).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    # Which chain the event belongs to: its tenant's id, kept when the tenant is deleted (no
    # foreign key), or SYSTEM_CHAIN.
    chain_id: Mapped[uuid.UUID]
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(10))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(60))
    subject_user_id: Mapped[uuid.UUID | None]
    ip: Mapped[str | None] = mapped_column(String(45))
    outcome: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(String(60))
    scopes: Mapped[list[str]] = mapped_column(default=list)
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    chain_seq: Mapped[int | None] = mapped_column(Integer)
    mac_key_version: Mapped[int | None]
    prev_mac: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))


class AuditHourly(Base):
    """Audit events counted per tenant, hour, action, outcome and reason, for the overview."""

    __tablename__ = "audit_hourly"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(60), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(10), primary_key=True)
    # "" when the event named no reason (a primary key column cannot be null).
    reason: Mapped[str] = mapped_column(String(60), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)
    # Google's latency as the events recorded it (`google_ms`): sum, worst and how many.
    google_ms_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    google_ms_max: Mapped[int] = mapped_column(default=0)
    google_calls: Mapped[int] = mapped_column(default=0)


class SecurityEvent(Base):
    """A security event token Google pushed (RISC), kept for BROKER_RISC_RETENTION_DAYS."""

    __tablename__ = "security_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    jti: Mapped[str] = mapped_column(String(255), unique=True)
    iss: Mapped[str] = mapped_column(String(500))
    iat: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    types: Mapped[list[str]] = mapped_column(default=list)
    # The first event's short name (`tokens-revoked`): what the counts group by.
    kind: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(400), default="")
    outcome: Mapped[str] = mapped_column(String(20))
    # The `reason` of an account event, or a verification event's `state`.
    detail: Mapped[str | None] = mapped_column(String(200))


class SecurityEventTenant(Base):
    """A tenant a security event acted in (one event may reach several)."""

    __tablename__ = "security_event_tenants"

    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("security_events.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )


# The WorkerState row a worker loop rewrites after every pass (its value: the pass interval).
WORKER_HEARTBEAT = "worker.heartbeat"


class WorkerState(Base):
    """Small named markers the worker keeps (e.g. last keep-alive sweep, its heartbeat)."""

    __tablename__ = "worker_state"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
