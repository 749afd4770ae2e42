"""The receiver's one service: verify a pushed SET, act on it, record it, answer per RFC 8935."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from broker import metrics
from broker.clock import get_clock
from broker.config import Settings
from broker.db import get_db
from broker.google import Google, NotConfigured, get_google
from broker.jwks import get_jwks
from broker.models import SecurityEvent, SecurityEventTenant
from broker.risc.actions import Acted, Actions, record, short_type, subject_of
from broker.risc.verify import Refused, SecurityEventToken, Unavailable, verify

log = logging.getLogger(__name__)
GOOGLE = "broker.risc.google"
PURGE_BATCH = 500


@dataclass(frozen=True)
class Receipt:
    """The receiver's answer: a status and, for a refusal, RFC 8935's error object."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""


def google_of(app: Flask) -> Google:
    """Return the Google client whose caches (documents, JWKS) the receiver shares."""
    try:
        return get_google(app)
    except NotConfigured:
        # Verifying events needs no client secret; keep one client for the caches anyway.
        google = app.extensions.get(GOOGLE)
        if google is None:
            google = app.extensions[GOOGLE] = Google(app.config["BROKER"], jwks=get_jwks(app))
        return google


def receive(app: Flask, body: bytes) -> Receipt:
    """Verify, de-duplicate, act on and record one SET; nothing changes unless it verifies."""
    settings: Settings = app.config["BROKER"]
    try:
        event = verify(google_of(app), settings, body)
    except Refused as refused:
        metrics.RISC_EVENTS.labels(type="unknown", outcome="refused").inc()
        log.info("security event refused: %s", refused.err, extra={"event": "risc"})
        return Receipt(400, {"err": refused.err, "description": refused.description},
                       "refused")
    except Unavailable as down:
        metrics.RISC_EVENTS.labels(type="unknown", outcome="error").inc()
        log.warning("security event not verified: %s", down, extra={"event": "risc"})
        return Receipt(503, outcome="error")
    kind = short_type(next(iter(event.events)))
    try:
        outcome = _act(app, settings, event)
    except IntegrityError:
        outcome = "duplicate"  # the same jti delivered twice at once: the other one acted
    except SQLAlchemyError as exc:
        metrics.RISC_EVENTS.labels(type=kind, outcome="error").inc()
        log.warning("security event not stored: %s", type(exc).__name__, extra={"event": "risc"})
        return Receipt(503, outcome="error")
    metrics.RISC_EVENTS.labels(type=kind, outcome=outcome).inc()
    log.info("security event %s: %s", kind, outcome, extra={"event": "risc"})
    return Receipt(202, outcome=outcome)


def _act(app: Flask, settings: Settings, event: SecurityEventToken) -> str:
    now = get_clock(app)()
    with get_db(app).transaction() as session:
        if session.scalar(select(SecurityEvent.id).where(SecurityEvent.jti == event.jti)):
            return "duplicate"
        actions = Actions(session, settings, event, now)
        acted: list[Acted] = [actions.act(uri, body) for uri, body in event.events.items()]
        subject = subject_of(next(iter(event.events.values()))).describe()
        return record(session, event, acted, subject, now).outcome


def security_event_counts(
    session: Session, tenant_id: uuid.UUID, since: dt.datetime
) -> dict[tuple[str, str], int]:
    """Return {(type, outcome): count} of the security events that reached a tenant since."""
    rows = session.execute(
        select(SecurityEvent.kind, SecurityEvent.outcome, func.count())
        .join(SecurityEventTenant, SecurityEventTenant.event_id == SecurityEvent.id)
        .where(SecurityEventTenant.tenant_id == tenant_id, SecurityEvent.received_at >= since)
        .group_by(SecurityEvent.kind, SecurityEvent.outcome)
    ).all()
    return {(kind, outcome): int(count) for kind, outcome, count in rows}


def purge_security_events(app: Flask) -> int:
    """Delete security events received more than BROKER_RISC_RETENTION_DAYS ago."""
    settings: Settings = app.config["BROKER"]
    cutoff = get_clock(app)() - dt.timedelta(days=settings.RISC_RETENTION_DAYS)
    with get_db(app).transaction() as session:
        doomed = list(session.scalars(
            select(SecurityEvent.id).where(SecurityEvent.received_at < cutoff)
            .order_by(SecurityEvent.received_at).limit(PURGE_BATCH)
        ))
        if doomed:
            session.execute(
                delete(SecurityEventTenant).where(SecurityEventTenant.event_id.in_(doomed))
            )
            session.execute(delete(SecurityEvent).where(SecurityEvent.id.in_(doomed)))
    return len(doomed)
