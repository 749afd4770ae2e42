"""A tenant admin's data keys: versions with dates and seal counts, rotation."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.keys import KeyService
from broker.models import DataKey


def list_keys(session: Session, tenant_id: uuid.UUID) -> list[DataKey]:
    """Return the tenant's data key versions, newest first."""
    return list(session.scalars(
        select(DataKey).where(DataKey.tenant_id == tenant_id).order_by(DataKey.version.desc())
    ))


def rotate(
    session: Session, keys: KeyService, tenant_id: uuid.UUID, *, actor: str,
    ip: str | None = None,
) -> int:
    """Make a new data key for new writes (the worker re-seals old rows); return its version."""
    before = keys.current_version(session, tenant_id)
    version = keys.rotate_tenant(session, tenant_id)
    audit.record(
        session, action="key.rotate_tenant", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"before": before, "after": version},
    )
    return version
