"""API clients of a tenant: create, rotate the secret with a grace period, disable, edit, list.

Every surface (the `broker client …` commands and the admin pages) calls these functions, so the
validation, the audit event and the refusal are the same whoever asks. `tenant_id` scopes a
lookup to one tenant (the admin pages); the CLI, which names no tenant, passes None.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.keys import digest, new_secret
from broker.models import ApiClient, Tenant
from broker.scopes import InvalidScope, normalise
from broker.tenancy.policy import parse_duration

MAX_GRACE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A client id with its secret, shown once."""

    client_id: str
    client_secret: str


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


def parse_grace(text: str) -> dt.timedelta:
    """Read how long the old secret keeps working (`0h` ends it at once), at most 30 days."""
    try:
        grace = dt.timedelta(seconds=parse_duration(text or "0h"))
    except ValueError:
        raise InvalidRequest(f"not a duration (like 24h): {text.strip()[:40]!r}") from None
    if grace > MAX_GRACE:
        raise InvalidRequest("the grace period is at most 30d")
    return grace


def check_name_free(session: Session, tenant_id: uuid.UUID, name: str) -> None:
    """Raise Conflict when the tenant already has a client of this name (any case, any status)."""
    # Disabled clients count too: their name stays in the audit log and must keep meaning one.
    taken = session.scalar(
        select(ApiClient.id).where(
            ApiClient.tenant_id == tenant_id, func.lower(ApiClient.name) == name.lower()
        ).limit(1)
    )
    if taken is not None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise Conflict(f"an API client named {shown!r} already exists; choose another name")


def scopes_in_use(session: Session, tenant_id: uuid.UUID) -> set[str]:
    """Return the scopes some active API client of the tenant may ask for."""
    allowed = session.scalars(
        select(ApiClient.allowed_scopes).where(
            ApiClient.tenant_id == tenant_id, ApiClient.status == "active"
        )
    )
    return {scope for scopes in allowed for scope in scopes}


def get_client(
    session: Session, client_id: str, *, tenant_id: uuid.UUID | None = None
) -> ApiClient:
    """Return a client, of this tenant when one is given; another tenant's is as absent."""
    query = select(ApiClient).where(ApiClient.id == client_id)
    if tenant_id is not None:
        query = query.where(ApiClient.tenant_id == tenant_id)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"There is no API client {client_id[:60]!r}.")
    return row


def create_client(
    session: Session, tenant: Tenant, *, name: str, scopes: Iterable[str],
    ip_ranges: Iterable[str] = (), actor: str | None = None, ip: str | None = None,
) -> Issued:
    """Create an API client; its secret is returned once and stored only as a digest."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest("a client name is 1-200 characters")
    check_name_free(session, tenant.id, name)
    secret = new_secret()
    row = ApiClient(
        id="cl_" + secrets.token_hex(10), tenant_id=tenant.id, name=name,
        secret_sha256=digest(secret), allowed_scopes=check_scopes(scopes),
        allowed_ip_ranges=check_ranges(ip_ranges), status="active",
    )
    session.add(row)
    audit.record(
        session, action="client.create", tenant_id=tenant.id, actor_type="admin", actor_id=actor,
        ip=ip, scopes=row.allowed_scopes,
        details={"client_id": row.id, "name": name, "ip_ranges": row.allowed_ip_ranges},
    )
    return Issued(row.id, secret)


def rotate_secret(
    session: Session, client_id: str, *, grace: dt.timedelta, now: dt.datetime,
    actor: str | None = None, tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> Issued:
    """Give an active client a new secret; the old one keeps working for `grace`."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    if row.status != "active":
        raise InvalidRequest("a disabled client gets no new secret")
    if grace > MAX_GRACE:
        raise InvalidRequest("the grace period is at most 30d")
    secret = new_secret()
    if grace.total_seconds() > 0:
        row.previous_secret_sha256 = row.secret_sha256
        row.previous_secret_expires_at = now + grace
    else:
        row.previous_secret_sha256 = row.previous_secret_expires_at = None
    row.secret_sha256 = digest(secret)
    audit.record(
        session, action="client.rotate_secret", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip,
        details={"client_id": row.id, "grace_seconds": int(grace.total_seconds())},
    )
    return Issued(row.id, secret)


def disable_client(
    session: Session, client_id: str, *, actor: str | None = None,
    tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> ApiClient:
    """Disable a client: its credentials stop working (within the brief client cache)."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    row.status = "disabled"
    audit.record(
        session, action="client.disable", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"client_id": row.id},
    )
    return row


def update_client(
    session: Session, client_id: str, *, scopes: Iterable[str], ip_ranges: Iterable[str],
    actor: str | None = None, tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Change a client's allowed scopes and IP ranges; audit before/after; return changes."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    after = {
        "allowed_scopes": check_scopes(scopes),
        "allowed_ip_ranges": list(dict.fromkeys(check_ranges(ip_ranges))),
    }
    changes = {
        name: {"before": list(getattr(row, name)), "after": value}
        for name, value in after.items()
        if list(getattr(row, name)) != value
    }
    if not changes:
        return {}
    for name, change in changes.items():
        setattr(row, name, change["after"])
    audit.record(
        session, action="client.update", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, scopes=row.allowed_scopes,
        details={
            "client_id": row.id,
            "before": {k: v["before"] for k, v in changes.items()},
            "after": {k: v["after"] for k, v in changes.items()},
        },
    )
    return changes


def list_clients(session: Session, tenant: Tenant) -> list[ApiClient]:
    """Return a tenant's clients, newest first."""
    return list(
        session.scalars(
            select(ApiClient)
            .where(ApiClient.tenant_id == tenant.id)
            .order_by(ApiClient.created_at.desc())
        )
    )
