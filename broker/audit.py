"""Audit events, written in the caller's transaction (chaining happens in the worker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from broker.logging import request_id
from broker.models import AuditEvent, utcnow


def record(
    session: Session,
    *,
    action: str,
    tenant_id: uuid.UUID | None,
    actor_type: str,
    actor_id: str | None = None,
    outcome: str = "ok",
    reason: str | None = None,
    subject_user_id: uuid.UUID | None = None,
    ip: str | None = None,
    scopes: Iterable[str] = (),
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the caller's transaction; never pass secrets in details."""
    event = AuditEvent(
        tenant_id=tenant_id,
        at=utcnow(),
        actor_type=actor_type,
        actor_id=actor_id,
        action=action,
        subject_user_id=subject_user_id,
        ip=ip,
        outcome=outcome,
        reason=reason,
        scopes=sorted(scopes),
        request_id=request_id() or None,
        details=details or {},
    )
    session.add(event)
    return event
