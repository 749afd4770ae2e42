"""API clients of a tenant: create, rotate the secret with a grace period, disable, list."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.clock import utcnow
from broker.errors import InvalidRequest, NotFound
from broker.models import ApiClient, Tenant
from broker.scopes import InvalidScope, normalise


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest of a client secret (high-entropy: no slow hash needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """Return a fresh 256-bit client secret."""
    return secrets.token_urlsafe(32)


def check_ranges(ranges: Iterable[str]) -> list[str]:
    """Return CIDRs normalised, or raise InvalidRequest naming the bad one."""
    clean = []
    for item in ranges:
        try:
            clean.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise InvalidRequest(f"not an IP range: {item!r}") from None
    return clean


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Return scopes in full form, or raise InvalidRequest."""
    try:
        clean = normalise(list(scopes))
    except InvalidScope as exc:
        raise InvalidRequest(str(exc)) from None
    if not clean:
        raise InvalidRequest("a client needs at least one scope")
    return clean


@dataclass(frozen=True)
class Issued:
    """A client id with its secret, shown once."""

    client_id: str
    client_secret: str


def create_client(
    session: Session, tenant: Tenant, *, name: str, scopes: Iterable[str],
    ip_ranges: Iterable[str] = (), actor: str | None = None,
) -> Issued:
    """Create an API client; its secret is returned once and stored only as a hash."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest("a client name is 1-200 characters")
    secret = new_secret()
    row = ApiClient(
        id="cl_" + secrets.token_hex(10), tenant_id=tenant.id, name=name,
        secret_sha256=hash_secret(secret), allowed_scopes=check_scopes(scopes),
        allowed_ip_ranges=check_ranges(ip_ranges), status="active",
    )
    session.add(row)
    audit.record(
        session, action="client.create", tenant_id=tenant.id, actor_type="admin", actor_id=actor,
        scopes=row.allowed_scopes,
        details={"client_id": row.id, "name": name, "ip_ranges": row.allowed_ip_ranges},
    )
    return Issued(row.id, secret)


def get_client(session: Session, client_id: str) -> ApiClient:
    """Return a client by id, or raise NotFound."""
    row = session.get(ApiClient, client_id)
    if row is None:
        raise NotFound(f"no client {client_id!r}")
    return row


def rotate_secret(
    session: Session, client_id: str, *, grace: dt.timedelta, actor: str | None = None,
    now: dt.datetime | None = None,
) -> Issued:
    """Give a client a new secret; the old one keeps working for `grace`."""
    row = get_client(session, client_id)
    secret = new_secret()
    now = now or utcnow()
    if grace.total_seconds() > 0:
        row.previous_secret_sha256 = row.secret_sha256
        row.previous_secret_expires_at = now + grace
    else:
        row.previous_secret_sha256 = row.previous_secret_expires_at = None
    row.secret_sha256 = hash_secret(secret)
    audit.record(
        session, action="client.rotate_secret", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, details={"client_id": row.id, "grace_seconds": int(grace.total_seconds())},
    )
    return Issued(row.id, secret)


def disable_client(session: Session, client_id: str, *, actor: str | None = None) -> ApiClient:
    """Disable a client: its credentials stop working (within the brief client cache)."""
    row = get_client(session, client_id)
    row.status = "disabled"
    audit.record(
        session, action="client.disable", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, details={"client_id": row.id},
    )
    return row


def list_clients(session: Session, tenant: Tenant) -> list[ApiClient]:
    """Return a tenant's clients, newest first."""
    return list(
        session.scalars(
            select(ApiClient)
            .where(ApiClient.tenant_id == tenant.id)
            .order_by(ApiClient.created_at.desc())
        )
    )


def parse_duration(text: str) -> dt.timedelta:
    """Read `90s`, `15m`, `24h` or `7d`; raise InvalidRequest otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise InvalidRequest(f"not a duration (like 24h): {text!r}")
    return dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])
