"""Audit events counted per tenant and hour: folded by the worker, read by the overview page."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.audit.chains import chained_top, locked_state
from broker.models import AuditEvent, AuditHourly, WorkerState

# The WorkerState row that serialises folding; its value is the highest folded `seq`.
ROLLUP_STATE = "audit-rollup"
FOLD_BATCH = 20_000
# At most this many events above the watermark are counted live: a stopped worker makes the
# page say its counts are partial instead of making it slow.
LIVE_LIMIT = 50_000


@dataclass
class Tally:
    """How many events, and Google's latency as they recorded it."""

    count: int = 0
    google_ms_sum: int = 0
    google_ms_max: int = 0
    google_calls: int = 0

    def add(self, count: int, ms_sum: int, ms_max: int, calls: int) -> None:
        """Add counts of the same bucket."""
        self.count += count
        self.google_ms_sum += ms_sum
        self.google_ms_max = max(self.google_ms_max, ms_max)
        self.google_calls += calls


Key = tuple[dt.datetime, str, str, str]  # hour, action, outcome, reason ("" for none)


@dataclass
class Tallies:
    """A tenant's counts by (hour, action, outcome, reason) since a time."""

    since: dt.datetime
    buckets: dict[Key, Tally] = field(default_factory=dict)
    partial: bool = False  # the worker is far behind: the newest events were not all counted

    def add(self, key: Key, count: int, ms_sum: int = 0, ms_max: int = 0, calls: int = 0) -> None:
        """Add to one bucket."""
        self.buckets.setdefault(key, Tally()).add(count, ms_sum, ms_max, calls)


def hour_of(at: dt.datetime) -> dt.datetime:
    """Return the UTC hour an instant falls in."""
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _google_ms(details: object) -> int | None:
    value = details.get("google_ms") if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _watermark(session: Session) -> WorkerState | None:
    return session.get(WorkerState, ROLLUP_STATE)


def folded_up_to(session: Session) -> int:
    """Return the highest `seq` already in the hourly counts (0 when none)."""
    row = _watermark(session)
    return int(row.value) if row is not None and row.value.isdigit() else 0


def fold(session: Session, batch: int = FOLD_BATCH) -> int:
    """Add chained events above the watermark to the hourly counts; return how many were read."""
    state = locked_state(session, ROLLUP_STATE, "0")
    done = int(state.value) if state.value.isdigit() else 0
    # Only chained events: the chainer has waited for every lower `seq` to commit, so nothing
    # can appear below the watermark after it passes. A batch is `batch` events, not `batch`
    # numbers: PostgreSQL's sequence leaves gaps.
    limit = chained_top(session)
    nth = session.scalar(
        select(AuditEvent.seq).where(AuditEvent.seq > done, AuditEvent.seq <= limit)
        .order_by(AuditEvent.seq).offset(batch - 1).limit(1)
    )
    top = nth if nth is not None else limit
    if top <= done:
        return 0
    rows = session.execute(
        select(AuditEvent.tenant_id, AuditEvent.at, AuditEvent.action, AuditEvent.outcome,
               AuditEvent.reason, AuditEvent.details)
        .where(AuditEvent.seq > done, AuditEvent.seq <= top)
    ).all()
    sums: dict[tuple[uuid.UUID, Key], Tally] = {}
    for tenant_id, at, action, outcome, reason, details in rows:
        if tenant_id is None:
            continue  # system events have no tenant page to show them
        ms = _google_ms(details)
        tally = sums.setdefault((tenant_id, (hour_of(at), action, outcome, reason or "")), Tally())
        tally.add(1, ms or 0, ms or 0, int(ms is not None))
    for (tenant_id, (hour, action, outcome, reason)), tally in sums.items():
        row = session.get(AuditHourly, (tenant_id, hour, action, outcome, reason))
        if row is None:
            row = AuditHourly(tenant_id=tenant_id, hour=hour, action=action, outcome=outcome,
                              reason=reason, count=0, google_ms_sum=0, google_ms_max=0,
                              google_calls=0)
            session.add(row)
        row.count += tally.count
        row.google_ms_sum += tally.google_ms_sum
        row.google_ms_max = max(row.google_ms_max, tally.google_ms_max)
        row.google_calls += tally.google_calls
    state.value = str(top)
    session.flush()
    return len(rows)


def tallies(
    session: Session, tenant_id: uuid.UUID, since: dt.datetime, actions: Iterable[str]
) -> Tallies:
    """Count a tenant's events of these actions since an hour: folded counts plus the newest."""
    actions = list(actions)
    since = hour_of(since)
    out = Tallies(since=since)
    watermark = folded_up_to(session)
    for hour, action, outcome, reason, count, ms_sum, ms_max, calls in session.execute(
        select(AuditHourly.hour, AuditHourly.action, AuditHourly.outcome, AuditHourly.reason,
               AuditHourly.count, AuditHourly.google_ms_sum, AuditHourly.google_ms_max,
               AuditHourly.google_calls)
        .where(AuditHourly.tenant_id == tenant_id, AuditHourly.hour >= since,
               AuditHourly.action.in_(actions))
    ):
        out.add((hour, action, outcome, reason), count, ms_sum, ms_max, calls)
    # Events the worker has not folded yet: a few seconds' worth while it runs.
    live = session.execute(
        select(AuditEvent.at, AuditEvent.action, AuditEvent.outcome, AuditEvent.reason,
               AuditEvent.details)
        .where(AuditEvent.seq > watermark, AuditEvent.tenant_id == tenant_id,
               AuditEvent.at >= since, AuditEvent.action.in_(actions))
        .order_by(AuditEvent.seq)
        .limit(LIVE_LIMIT + 1)
    ).all()
    out.partial = len(live) > LIVE_LIMIT
    for at, action, outcome, reason, details in live[:LIVE_LIMIT]:
        ms = _google_ms(details)
        out.add((hour_of(at), action, outcome, reason or ""), 1, ms or 0, ms or 0,
                int(ms is not None))
    return out


def waiting(session: Session, tenant_id: uuid.UUID) -> int:
    """Count the tenant's audit events not yet chained."""
    return int(session.scalar(
        select(func.count()).select_from(AuditEvent)
        .where(AuditEvent.chain_seq.is_(None), AuditEvent.chain_id == tenant_id)
    ) or 0)
