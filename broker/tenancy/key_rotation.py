"""Data keys and master keys: listing, tenant key rotation and master key rotation, audited."""

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
    """Make a new data key for new writes (old rows are re-sealed later); return its version."""
    before = keys.current_version(session, tenant_id)
    version = keys.rotate_tenant(session, tenant_id)
    audit.record(
        session, action="key.rotate_tenant", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"before": before, "after": version},
    )
    return version


def rotate_master(
    session: Session, keys: KeyService, *, before: str, actor: str, ip: str | None = None
) -> int:
    """Rewrap every data key under the keyring's (new) primary and audit it; return how many.

    The caller has already made the new key primary in the key source and reloaded the keyring;
    the audit names key ids only, never key material.
    """
    after = keys.keyring.primary_id
    count = keys.rewrap_all(session)
    audit.record(
        session, action="key.rotate_master", tenant_id=None, actor_type="admin",
        actor_id=actor, ip=ip, details={"before": before, "after": after, "rewrapped": count},
    )
    return count
