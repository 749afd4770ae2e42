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

from sqlalchemy import ColumnElement, false, func, literal, or_, select, tuple_
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
class Cursor:
    """A place in the log (newest first, ties by id), written into page links."""

    at: dt.datetime
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.at.astimezone(dt.UTC):%Y%m%dT%H%M%S%f}-{self.id.hex}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Read a cursor from a page link; raise ValueError on anything else."""
        stamp, _, ident = text.partition("-")
        if len(stamp) != 21 or len(ident) != 32:
            raise ValueError(text)
        at = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)
        return cls(at, uuid.UUID(hex=ident))

    @classmethod
    def of(cls, event: AuditEvent) -> Cursor:
        """Return the place of an event."""
        return cls(event.at, event.id)


@dataclass(frozen=True)
class AuditFilter:
    """What the admin asked to see."""

    user: str = ""
    client: str = ""
    action: str = ""
    outcome: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # Keyset cursors: show events just older than `before`, or just newer than `after`.
    before: Cursor | None = None
    after: Cursor | None = None
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
    emails: dict[str, str]
    newer: Cursor | None = None  # link to the events just newer than this page, if any
    older: Cursor | None = None  # link to the events just older than this page, if any


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
    cursors: dict[str, Cursor | None] = {}
    for name in ("before", "after"):
        text = str(args.get(name) or "").strip()
        try:
            cursors[name] = Cursor.parse(text) if text else None
        except ValueError:
            raise InvalidRequest(f"{name}: not a place in the log; use the page links") from None
    if cursors["before"] and cursors["after"]:
        raise InvalidRequest("give before or after, not both")
    return AuditFilter(
        user=raw["user"], client=raw["client"], action=raw["action"], outcome=raw["outcome"],
        since=times["since"], until=times["until"], before=cursors["before"],
        after=cursors["after"], raw=raw,
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
    """Return one page of the tenant's events matching the filter, newest first.

    Keyset pagination: the page starts right after a cursor (an event's time and id), so a
    deep page costs what the first one does (an index range scan, never OFFSET's skipped rows)
    and new events arriving meanwhile neither shift nor repeat rows.
    """
    where = _conditions(session, tenant_id, wanted)
    place = tuple_(AuditEvent.at, AuditEvent.id)
    query = select(AuditEvent).limit(size + 1)
    rows: list[AuditEvent] = []
    if wanted.after is not None:
        # Newer events: walk up from the cursor, then show them newest first like any page.
        newer = query.where(*where, place > tuple_(literal(wanted.after.at, AuditEvent.at.type),
                                                   literal(wanted.after.id, AuditEvent.id.type)))
        rows = list(session.scalars(newer.order_by(AuditEvent.at, AuditEvent.id)))
    if len(rows) > size:
        events = list(reversed(rows[:size]))
        more_newer, more_older = True, True
    else:
        # No cursor, or fewer than a page above it: this is simply the newest page.
        if wanted.before is not None and wanted.after is None:
            where.append(place < tuple_(literal(wanted.before.at, AuditEvent.at.type),
                                        literal(wanted.before.id, AuditEvent.id.type)))
        query = query.where(*where).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        rows = list(session.scalars(query))
        events = rows[:size]
        more_newer = wanted.before is not None and wanted.after is None
        more_older = len(rows) > size
    return AuditPage(
        events, _emails(session, tenant_id, events),
        newer=Cursor.of(events[0]) if events and more_newer else None,
        older=Cursor.of(events[-1]) if events and more_older else None,
    )


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
        .where(*_conditions(session, tenant_id, replace(wanted, before=None, after=None)))
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
