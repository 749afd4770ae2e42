"""The admin's view of the audit log: filters, pages, CSV export and the chain's state."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.audit import chains as audit
from broker.errors import InvalidRequest
from broker.keys import CryptoError, KeyService
from broker.models import AuditEvent, User

log = logging.getLogger(__name__)
PAGE_SIZE = 50
EXPORT_LIMIT = 100_000
OUTCOMES = ("ok", "denied", "error")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "at", "action", "outcome", "reason", "actor_type", "actor_id", "subject_user_id",
    "subject_email", "ip", "scopes", "request_id", "details", "chain_seq",
)


@dataclass(frozen=True)
class AuditFilter:
    """What the admin asked to see."""

    user: str = ""
    client: str = ""
    action: str = ""
    outcome: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    page: int = 1
    raw: dict[str, str] = field(default_factory=dict)

    def args(self, **overrides: Any) -> dict[str, str]:
        """Return the query arguments that reproduce this filter (for links)."""
        out = {k: v for k, v in self.raw.items() if v}
        out.update({k: str(v) for k, v in overrides.items()})
        return out


@dataclass
class AuditPage:
    """One page of events, newest first, with the emails of the users they name."""

    events: list[AuditEvent]
    page: int
    has_next: bool
    emails: dict[str, str]


@dataclass
class ChainStatus:
    """How much of the tenant's log is chained and what verification said."""

    chained: int
    waiting: int
    head: int | None
    verified: bool | None = None
    problems: list[str] = field(default_factory=list)


def parse_time(text: str, *, end: bool = False) -> dt.datetime:
    """Read a date or date-time (UTC unless it says otherwise); a bare end date is inclusive."""
    text = text.strip().replace(" ", "T").removesuffix("Z").removesuffix("z")
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    if end and "T" not in text:
        moment += dt.timedelta(days=1)
    return moment.astimezone(dt.UTC)


def parse_filter(args: Mapping[str, str]) -> AuditFilter:
    """Read the filter from query arguments; raise InvalidRequest on nonsense."""
    raw = {
        name: str(args.get(name) or "").strip()[:200]
        for name in ("user", "client", "action", "outcome", "since", "until")
    }
    if raw["outcome"] and raw["outcome"] not in OUTCOMES:
        raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
    times: dict[str, dt.datetime | None] = {}
    for name in ("since", "until"):
        try:
            times[name] = parse_time(raw[name], end=name == "until") if raw[name] else None
        except ValueError:
            raise InvalidRequest(f"{name}: not a date or time like 2026-01-31T12:00") from None
    page_text = str(args.get("page") or "1")
    if not page_text.isdigit() or not 1 <= int(page_text) <= 100_000:
        raise InvalidRequest("page must be a positive number")
    return AuditFilter(
        user=raw["user"], client=raw["client"], action=raw["action"], outcome=raw["outcome"],
        since=times["since"], until=times["until"], page=int(page_text), raw=raw,
    )


def _user_id(session: Session, tenant_id: uuid.UUID, text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return session.scalar(
            select(User.id).where(User.tenant_id == tenant_id, User.email == text.lower())
        )


def _conditions(
    session: Session, tenant_id: uuid.UUID, wanted: AuditFilter
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [AuditEvent.tenant_id == tenant_id]
    if wanted.user:
        user_id = _user_id(session, tenant_id, wanted.user)
        if user_id is None:
            where.append(false())
        else:
            where.append(or_(
                AuditEvent.subject_user_id == user_id, AuditEvent.actor_id == str(user_id)
            ))
    if wanted.client:
        where.append(AuditEvent.actor_type == "client")
        where.append(AuditEvent.actor_id == wanted.client)
    if wanted.action.endswith(("*", ".")):
        where.append(AuditEvent.action.startswith(wanted.action.rstrip("*"), autoescape=True))
    elif wanted.action:
        where.append(AuditEvent.action == wanted.action)
    if wanted.outcome:
        where.append(AuditEvent.outcome == wanted.outcome)
    if wanted.since:
        where.append(AuditEvent.at >= wanted.since)
    if wanted.until:
        where.append(AuditEvent.at < wanted.until)
    return where


def _emails(
    session: Session, tenant_id: uuid.UUID, events: list[AuditEvent]
) -> dict[str, str]:
    """Return the emails of the users events name as subject or actor, keyed by id text."""
    ids = {e.subject_user_id for e in events if e.subject_user_id}
    for event in events:
        if event.actor_type in ("user", "admin") and event.actor_id:
            try:
                ids.add(uuid.UUID(event.actor_id))
            except ValueError:
                continue
    if not ids:
        return {}
    rows = session.execute(
        select(User.id, User.email).where(User.tenant_id == tenant_id, User.id.in_(ids))
    )
    return {str(user_id): email for user_id, email in rows}


def page_of_events(
    session: Session, tenant_id: uuid.UUID, wanted: AuditFilter, size: int = PAGE_SIZE
) -> AuditPage:
    """Return one page of the tenant's events matching the filter, newest first."""
    rows = list(session.scalars(
        select(AuditEvent)
        .where(*_conditions(session, tenant_id, wanted))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .offset((wanted.page - 1) * size)
        .limit(size + 1)
    ))
    events = rows[:size]
    return AuditPage(events, wanted.page, len(rows) > size, _emails(session, tenant_id, events))


def actions(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """Return the distinct actions in the tenant's log, for the filter's choices."""
    return sorted(session.scalars(
        select(AuditEvent.action).where(AuditEvent.tenant_id == tenant_id).distinct()
    ))


def escape_cell(value: object) -> str:
    """Return a cell as text that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _row(event: AuditEvent, emails: dict[str, str]) -> list[str]:
    at = event.at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    subject = event.subject_user_id
    values = (
        at, event.action, event.outcome, event.reason, event.actor_type, event.actor_id,
        subject, emails.get(str(subject)) if subject else None, event.ip, " ".join(event.scopes),
        event.request_id, json.dumps(event.details, sort_keys=True, default=str),
        event.chain_seq,
    )
    return [escape_cell(v) for v in values]


def export_csv(
    session: Session, tenant_id: uuid.UUID, wanted: AuditFilter, limit: int = EXPORT_LIMIT
) -> str:
    """Return the matching events (all pages, newest first) as CSV text."""
    query = (
        select(AuditEvent)
        .where(*_conditions(session, tenant_id, replace(wanted, page=1)))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(limit)
    )
    events = list(session.scalars(query))
    emails = _emails(session, tenant_id, events)
    out = io.StringIO()
    # Quote every cell and keep CR/LF inside quotes: one event is one record.
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(_row(event, emails))
    return out.getvalue()


def chain_status(session: Session, tenant_id: uuid.UUID, keys: KeyService) -> ChainStatus:
    """Count chained and waiting events and verify the chained part (read-only)."""
    chained, head = session.execute(
        select(func.count(AuditEvent.chain_seq), func.max(AuditEvent.chain_seq))
        .where(AuditEvent.chain_id == tenant_id)
    ).one()
    total = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.chain_id == tenant_id)
    )
    status = ChainStatus(int(chained or 0), int(total or 0) - int(chained or 0), head)
    try:
        verdict = audit.verify(session, keys, tenant_id)
    except (CryptoError, SQLAlchemyError) as exc:
        # A missing audit key or a broken row must not take the whole log page down.
        log.warning("audit verification could not run: %s", type(exc).__name__)
        status.verified, status.problems = False, ["the verification could not run"]
        return status
    status.verified = verdict.ok
    if verdict.first_bad is not None:
        status.problems = [f"event {verdict.first_bad}: {verdict.problem}"]
    status.problems += [f"event {event_id}: {why}" for event_id, why in verdict.refused]
    return status
