"""A tenant admin's API clients: the tenant-scoped lookup and edits clients.py leaves out."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import InvalidRequest, NotFound
from broker.models import ApiClient, Tenant
from broker.tenancy import clients

MAX_GRACE = dt.timedelta(days=30)


def get_client(session: Session, tenant_id: uuid.UUID, client_id: str) -> ApiClient:
    """Return a client of this tenant; another tenant's id is as absent as an unknown one."""
    row = session.scalar(
        select(ApiClient).where(ApiClient.id == client_id, ApiClient.tenant_id == tenant_id)
    )
    if row is None:
        raise NotFound("There is no such API client in your organization.")
    return row


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """Return the tenant, or raise NotFound."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("no such organization")
    return tenant


def parse_grace(text: str) -> dt.timedelta:
    """Read how long the old secret keeps working (`0h` ends it at once)."""
    grace = clients.parse_duration(text or "0h")
    if grace > MAX_GRACE:
        raise InvalidRequest("the grace period is at most 30d")
    return grace


def rotate(
    session: Session, tenant_id: uuid.UUID, client_id: str, *, grace: dt.timedelta,
    actor: str, now: dt.datetime,
) -> clients.Issued:
    """Give a client of this tenant a new secret, the old one valid for `grace`."""
    row = get_client(session, tenant_id, client_id)
    if row.status != "active":
        raise InvalidRequest("a disabled client gets no new secret")
    return clients.rotate_secret(session, row.id, grace=grace, actor=actor, now=now)


def disable(session: Session, tenant_id: uuid.UUID, client_id: str, *, actor: str) -> ApiClient:
    """Disable a client of this tenant."""
    row = get_client(session, tenant_id, client_id)
    return clients.disable_client(session, row.id, actor=actor)


def update(
    session: Session, tenant_id: uuid.UUID, client_id: str, *, scopes: Iterable[str],
    ip_ranges: Iterable[str], actor: str, ip: str | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Change a client's allowed scopes and IP ranges; audit before/after; return changes."""
    row = get_client(session, tenant_id, client_id)
    after = {
        "allowed_scopes": clients.check_scopes(scopes),
        "allowed_ip_ranges": list(dict.fromkeys(clients.check_ranges(ip_ranges))),
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
        session, action="client.update", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, scopes=row.allowed_scopes,
        details={
            "client_id": row.id,
            "before": {k: v["before"] for k, v in changes.items()},
            "after": {k: v["after"] for k, v in changes.items()},
        },
    )
    return changes
