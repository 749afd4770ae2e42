"""Trust rules: which platform identities may act as which API client of a tenant.

Every surface (`broker workload …`, the admin page) calls these functions, so the validation,
the audit event and the refusal are the same whoever asks.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import audit
from broker.config import is_loopback_url
from broker.errors import InvalidRequest, NotFound
from broker.jwks import key_set_of
from broker.models import Tenant, User, WorkloadTrust
from broker.tenancy import clients

MIN_LIFETIME, MAX_LIFETIME = 60, 86400
DEFAULT_LIFETIME = 3600
ANY = "*"
# The registered claims have their own options; conditions pin the platform's own claims.
RESERVED = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti"})
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_:./-]{0,99}")


@dataclass(frozen=True)
class TrustSpec:
    """What a trust rule says, as a surface read it (users by email or id)."""

    client_id: str
    issuer: str
    audiences: tuple[str, ...] = ()
    subject: str | None = None
    any_subject: bool = False
    claims: tuple[tuple[str, str], ...] = ()
    users: tuple[str, ...] = ()
    any_user: bool = False
    max_lifetime: int = DEFAULT_LIFETIME
    expires_at: dt.datetime | None = None
    jwks: dict[str, Any] | None = field(default=None, repr=False)


def parse_claim(text: str) -> tuple[str, str]:
    """Read a `NAME=VALUE` claim condition, or raise InvalidRequest."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _CLAIM_NAME.fullmatch(name) or not 0 < len(value) <= 500:
        raise InvalidRequest(f"a claim condition is NAME=VALUE, e.g. repository_id=42: "
                             f"{text[:60]!r}")
    if name in RESERVED:
        raise InvalidRequest(f"{name} has its own option (--issuer, --subject, --audience, "
                             "--max-lifetime)")
    return name, value


def check_issuer(url: str) -> str:
    """Return an issuer URL as given, or raise InvalidRequest: https (http only on loopback)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_url(url)):
        raise InvalidRequest("the issuer must be an https:// URL (http only on loopback)")
    if (not parts.hostname or parts.query or parts.fragment or parts.username
            or parts.password or len(url) > 500):
        raise InvalidRequest("the issuer is a plain URL: no query, fragment or credentials")
    return url


def find_user(session: Session, tenant_id: uuid.UUID, who: str) -> uuid.UUID | None:
    """Return the id of the tenant's user with this email address or id, or None."""
    text = who.strip()
    try:
        condition = User.id == uuid.UUID(text)
    except ValueError:
        condition = func.lower(User.email) == text.lower()
    found: uuid.UUID | None = session.scalar(
        select(User.id).where(User.tenant_id == tenant_id, condition))
    return found


def _users(session: Session, tenant_id: uuid.UUID, given: Iterable[str]) -> list[str]:
    ids = []
    for item in given:
        found = find_user(session, tenant_id, item)
        if found is None:
            raise InvalidRequest(f"no user {item.strip()[:80]!r} in this tenant")
        ids.append(str(found))
    if len(ids) > 100:
        raise InvalidRequest("at most 100 users; use any user for more")
    return list(dict.fromkeys(ids))


def add_trust(
    session: Session, tenant: Tenant, spec: TrustSpec, *, default_audience: str,
    now: dt.datetime, actor: str | None = None, ip: str | None = None,
) -> WorkloadTrust:
    """Validate and add a trust rule naming one of the tenant's active API clients."""
    client = clients.get_client(session, spec.client_id, tenant_id=tenant.id)
    if client.status != "active":
        raise InvalidRequest("the API client is disabled")
    if spec.any_subject == (spec.subject is not None):
        raise InvalidRequest("name exactly one of a subject or any subject")
    if spec.subject is not None and not 0 < len(spec.subject.strip()) <= 500:
        raise InvalidRequest("the subject is 1-500 characters")
    if spec.any_user == bool(spec.users):
        raise InvalidRequest("name the users the job may act for, or any user")
    if not MIN_LIFETIME <= spec.max_lifetime <= MAX_LIFETIME:
        raise InvalidRequest(f"the maximum lifetime is {MIN_LIFETIME}-{MAX_LIFETIME} seconds")
    if spec.expires_at is not None and spec.expires_at <= now:
        raise InvalidRequest("the expiry date is in the past")
    audiences = [a.strip() for a in spec.audiences if a.strip()] or [default_audience]
    if len(audiences) > 10 or any(len(a) > 500 for a in audiences):
        raise InvalidRequest("at most 10 audiences of at most 500 characters")
    conditions: dict[str, str] = {}
    for name, value in spec.claims:
        if name in conditions:
            raise InvalidRequest(f"the claim {name!r} is named twice")
        conditions[name] = value
    if len(conditions) > 20:
        raise InvalidRequest("at most 20 claim conditions")
    if spec.jwks is not None:
        try:
            key_set_of(spec.jwks)
        except ValueError as exc:
            raise InvalidRequest(f"the pinned JWKS: {exc}") from None
    row = WorkloadTrust(
        id=uuid.uuid4(), tenant_id=tenant.id, client_id=client.id,
        issuer=check_issuer(spec.issuer), jwks=spec.jwks, audiences=audiences,
        subject=spec.subject.strip() if spec.subject is not None else None, claims=conditions,
        users=[ANY] if spec.any_user else _users(session, tenant.id, spec.users),
        max_lifetime=spec.max_lifetime, expires_at=spec.expires_at, status="active",
        created_at=now,
    )
    session.add(row)
    audit.record(
        session, action="workload.add", tenant_id=tenant.id, actor_type="admin",
        actor_id=actor, ip=ip, details=describe(row),
    )
    return row


def get_trust(
    session: Session, trust_id: str, *, tenant_id: uuid.UUID | None = None
) -> WorkloadTrust:
    """Return a rule, of this tenant when one is given; another tenant's is as absent."""
    try:
        key = uuid.UUID(trust_id)
    except ValueError:
        raise NotFound(f"There is no trust rule {trust_id[:60]!r}.") from None
    query = select(WorkloadTrust).where(WorkloadTrust.id == key)
    if tenant_id is not None:
        query = query.where(WorkloadTrust.tenant_id == tenant_id)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"There is no trust rule {trust_id[:60]!r}.")
    return row


def disable_trust(
    session: Session, trust_id: str, *, actor: str | None = None,
    tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> WorkloadTrust:
    """Disable a rule: tokens it admitted are refused from the next exchange on."""
    row = get_trust(session, trust_id, tenant_id=tenant_id)
    row.status = "disabled"
    audit.record(
        session, action="workload.disable", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"trust_id": str(row.id), "client_id": row.client_id},
    )
    return row


def list_trusts(
    session: Session, tenant: Tenant, *, active_only: bool = False
) -> list[WorkloadTrust]:
    """Return a tenant's rules, newest first."""
    query = select(WorkloadTrust).where(WorkloadTrust.tenant_id == tenant.id)
    if active_only:
        query = query.where(WorkloadTrust.status == "active")
    return list(session.scalars(query.order_by(WorkloadTrust.created_at.desc())))


def describe(row: WorkloadTrust) -> dict[str, Any]:
    """Return a rule as the audit, `--json` and the admin page show it (no keys)."""
    return {
        "trust_id": str(row.id), "client_id": row.client_id, "issuer": row.issuer,
        "jwks": "pinned" if row.jwks else "discovery", "audiences": list(row.audiences),
        "subject": row.subject if row.subject is not None else ANY,
        "claims": dict(row.claims or {}), "users": list(row.users),
        "max_lifetime": row.max_lifetime,
        "expires_at": row.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if row.expires_at else None,
        "status": row.status,
    }
