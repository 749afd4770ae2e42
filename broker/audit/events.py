"""Audit events, written in the caller's transaction (ORM or Core, or the bare driver)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Required, TypedDict, Unpack

from sqlalchemy import Connection, bindparam, insert
from sqlalchemy.orm import Session

from broker.clock import current_time
from broker.logging import request_id
from broker.models import SYSTEM_CHAIN, AuditEvent

if TYPE_CHECKING:
    from broker.driver import DriverConnection


class AuditFields(TypedDict, total=False):
    """What a caller says about an audited event (never secrets in details)."""

    action: Required[str]
    tenant_id: Required[uuid.UUID | None]
    actor_type: Required[str]
    actor_id: str | None
    outcome: str
    reason: str | None
    subject_user_id: uuid.UUID | None
    ip: str | None
    scopes: Iterable[str]
    details: dict[str, Any] | None


EVENT_COLUMNS = ("id", "tenant_id", "chain_id", "at", "actor_type", "actor_id", "action",
                 "subject_user_id", "ip", "outcome", "reason", "scopes", "request_id", "details")


def event_values(fields: AuditFields, now: dt.datetime | None = None) -> dict[str, Any]:
    """Return an audit row's column values, stamped `now` (else the app clock) and request id."""
    return {
        "id": uuid.uuid4(), "tenant_id": fields["tenant_id"],
        "chain_id": fields["tenant_id"] or SYSTEM_CHAIN, "at": now or current_time(),
        "actor_type": fields["actor_type"], "actor_id": fields.get("actor_id"),
        "action": fields["action"], "subject_user_id": fields.get("subject_user_id"),
        "ip": fields.get("ip"), "outcome": fields.get("outcome", "ok"),
        "reason": fields.get("reason"), "scopes": sorted(fields.get("scopes", ())),
        "request_id": request_id() or None, "details": fields.get("details") or {},
    }


def record(
    session: Session, *, now: dt.datetime | None = None, **fields: Unpack[AuditFields]
) -> AuditEvent:
    """Add one audit event to the caller's ORM transaction, at `now` or the app clock's time."""
    event = AuditEvent(**event_values(fields, now))
    session.add(event)
    return event


# Built once, every column an explicit parameter: compiled once per dialect, then only
# executed, by SQLAlchemy or by the bare driver (which applies no Python-side defaults).
# `seq` is not among them: the database assigns it within this same statement.
INSERT = insert(AuditEvent).values({name: bindparam(name) for name in EVENT_COLUMNS})


def insert_event(
    connection: Connection | DriverConnection, *, now: dt.datetime | None = None,
    **fields: Unpack[AuditFields],
) -> None:
    """Insert one audit event in the caller's Core transaction, at `now` or the app clock's."""
    connection.execute(INSERT, event_values(fields, now))


