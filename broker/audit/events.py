"""Audit events in the caller's transaction; the worker's keyed chain and its verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Required, TypedDict, Unpack

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy.orm import Session

from broker.clock import current_time
from broker.logging import request_id
from broker.models import AuditEvent, WorkerState, tenant_is

if TYPE_CHECKING:
    from broker.driver import DriverConnection
    from broker.keys import KeyService


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


EVENT_COLUMNS = ("id", "tenant_id", "at", "actor_type", "actor_id", "action", "subject_user_id",
                 "ip", "outcome", "reason", "scopes", "request_id", "details")


def event_values(fields: AuditFields, now: dt.datetime | None = None) -> dict[str, Any]:
    """Return an audit row's column values, stamped `now` (else the app clock) and request id."""
    return {
        "id": uuid.uuid4(), "tenant_id": fields["tenant_id"], "at": now or current_time(),
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
INSERT = insert(AuditEvent).values({name: bindparam(name) for name in EVENT_COLUMNS})


def insert_event(
    connection: Connection | DriverConnection, *, now: dt.datetime | None = None,
    **fields: Unpack[AuditFields],
) -> None:
    """Insert one audit event in the caller's Core transaction, at `now` or the app clock's."""
    connection.execute(INSERT, event_values(fields, now))


def canonical(event: AuditEvent) -> bytes:
    """Return the bytes an event's MAC covers: every recorded field and its place in the chain."""
    fields = {
        "id": str(event.id), "tenant_id": str(event.tenant_id) if event.tenant_id else None,
        "at": event.at.isoformat(), "actor_type": event.actor_type, "actor_id": event.actor_id,
        "action": event.action,
        "subject_user_id": str(event.subject_user_id) if event.subject_user_id else None,
        "ip": event.ip, "outcome": event.outcome, "reason": event.reason,
        "scopes": list(event.scopes or []), "request_id": event.request_id,
        "details": event.details or {}, "chain_seq": event.chain_seq,
        "mac_key_version": event.mac_key_version,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()


def compute_mac(key: bytes, prev_mac: str, event: AuditEvent) -> str:
    """Return HMAC-SHA256(audit key, prev_mac | canonical event) in hex."""
    return hmac.new(key, prev_mac.encode() + b"|" + canonical(event), hashlib.sha256).hexdigest()


def _lock_chain(session: Session, tenant_id: uuid.UUID | None) -> None:
    """Hold the tenant's chain lock for this transaction (a WorkerState row)."""
    name = f"audit-chain:{tenant_id or 'system'}"
    row = session.get(WorkerState, name, with_for_update=True)
    if row is None:
        session.add(WorkerState(name=name, value=""))
        session.flush()
        session.get(WorkerState, name, with_for_update=True)


def chain(
    session: Session, keys: KeyService, tenant_id: uuid.UUID | None, *,
    older_than: dt.datetime, batch: int = 500,
) -> int:
    """Append a batch of unchained events older than `older_than` to the tenant's chain."""
    _lock_chain(session, tenant_id)
    head = session.execute(
        select(AuditEvent.chain_seq, AuditEvent.mac)
        .where(tenant_is(AuditEvent.tenant_id, tenant_id), AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq.desc()).limit(1)
    ).one_or_none()
    seq: int = int(head[0] or 0) if head else 0
    prev: str = (head[1] or "") if head else ""
    version, key = keys.audit_key(session)
    events = session.scalars(
        select(AuditEvent)
        .where(tenant_is(AuditEvent.tenant_id, tenant_id), AuditEvent.chain_seq.is_(None),
               AuditEvent.at < older_than)
        .order_by(AuditEvent.at, AuditEvent.id).limit(batch)
    ).all()
    for event in events:
        seq += 1
        event.chain_seq, event.mac_key_version, event.prev_mac = seq, version, prev
        event.mac = prev = compute_mac(key, prev, event)
    session.flush()
    return len(events)


@dataclass
class Verdict:
    """What `verify` found in one tenant's chain."""

    chained: int = 0
    pending: int = 0
    first_bad: uuid.UUID | None = None
    problem: str = ""
    head: str = ""

    @property
    def ok(self) -> bool:
        """Say whether the chained part is intact."""
        return self.first_bad is None


def verify(session: Session, keys: KeyService, tenant_id: uuid.UUID | None) -> Verdict:
    """Check a tenant's chain read-only: edits, deletions and reordering; count the pending."""
    verdict = Verdict()
    macs: dict[int, bytes] = {}
    expected_seq, prev = 1, ""
    for event in session.scalars(
        select(AuditEvent)
        .where(tenant_is(AuditEvent.tenant_id, tenant_id), AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq)
    ):
        version = event.mac_key_version or 0
        if version not in macs:
            macs[version] = keys.audit_key(session, version)[1]
        problem = ""
        if event.chain_seq != expected_seq:
            problem = f"sequence jumps from {expected_seq - 1} to {event.chain_seq} (deleted)"
        elif event.prev_mac != prev:
            problem = "does not follow the previous event (deleted or reordered)"
        elif not hmac.compare_digest(event.mac or "", compute_mac(macs[version], prev, event)):
            problem = "content does not match its MAC (edited or reordered)"
        if problem:
            verdict.first_bad, verdict.problem = event.id, problem
            break
        verdict.chained += 1
        expected_seq, prev = expected_seq + 1, event.mac or ""
    verdict.head = prev
    verdict.pending = int(session.scalar(
        select(func.count()).select_from(AuditEvent)
        .where(tenant_is(AuditEvent.tenant_id, tenant_id), AuditEvent.chain_seq.is_(None))
    ) or 0)
    return verdict
