"""Admin page /admin/overview: the tenant at a glance, an admin's landing page."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from flask import Blueprint, current_app, render_template

from broker import audit, risc
from broker.db import get_db
from broker.tenancy import certificates, key_rotation, tenants, users
from broker.tenancy import clients as api_clients
from broker.web import guard
from broker.web.admin import access
from broker.web.admin.charts import Chart, stacked_bars
from broker.web.admin.connections import REASONS
from broker.web.admin.worker_status import worker_seen

bp = Blueprint("overview", __name__, url_prefix="/overview")
ACTIONS = ("token.handout", "token.refresh", "connection.needs_reauth")
NEEDS_REAUTH_SHOWN = 10


@dataclass(frozen=True)
class Series:
    """One chart and the table that says the same for screen readers."""

    chart: Chart
    rows: list[tuple[str, dict[str, float]]]


def _hours(now: dt.datetime, count: int) -> list[dt.datetime]:
    last = audit.hour_of(now)
    return [last - dt.timedelta(hours=count - 1 - i) for i in range(count)]


def _handouts(tallies: audit.Tallies, hours: list[dt.datetime], days: bool) -> Series:
    by_hour: dict[dt.datetime, dict[str, float]] = {h: {"served": 0, "refused": 0} for h in hours}
    for (hour, action, outcome, _), tally in tallies.buckets.items():
        if action == "token.handout" and hour in by_hour:
            by_hour[hour]["served" if outcome == "ok" else "refused"] += tally.count
    rows = [(f"{h:%a %d %b %H}:00", by_hour[h]) for h in hours]
    labels = [f"{h:%a %d}" if days else f"{h:%H}:00" for h in hours]
    chart = stacked_bars(rows, ("served", "refused"), labels=labels,
                         label_every=24 if days else 3)
    if days:  # the table reads better by day than as 168 rows
        rows = _by_day(rows, hours)
    return Series(chart, rows)


def _by_day(
    rows: list[tuple[str, dict[str, float]]], hours: list[dt.datetime]
) -> list[tuple[str, dict[str, float]]]:
    days: dict[str, Counter[str]] = {}
    for hour, (_, values) in zip(hours, rows, strict=True):
        days.setdefault(f"{hour:%a %d %b}", Counter()).update(values)
    return [(day, dict(values)) for day, values in days.items()]


def _latency(tallies: audit.Tallies, hours: list[dt.datetime]) -> Series:
    sums: dict[dt.datetime, list[int]] = {h: [0, 0, 0] for h in hours}  # ms sum, calls, worst
    for (hour, action, _, _), tally in tallies.buckets.items():
        if action == "token.refresh" and hour in sums and tally.google_calls:
            cell = sums[hour]
            cell[0] += tally.google_ms_sum
            cell[1] += tally.google_calls
            cell[2] = max(cell[2], tally.google_ms_max)
    rows: list[tuple[str, dict[str, float]]] = [
        (f"{h:%H}:00", {"average": round(s / n) if n else 0, "worst": worst, "calls": n})
        for h, (s, n, worst) in sums.items()
    ]
    chart = stacked_bars([(name, {"average": v["average"]}) for name, v in rows], ("average",),
                         label_every=3, unit=" ms")
    return Series(chart, rows)


def _outcomes(tallies: audit.Tallies) -> list[tuple[str, str, int]]:
    """Return refresh outcomes and hand-out refusals by reason, most frequent first."""
    counts: Counter[tuple[str, str]] = Counter()
    for (_, action, outcome, reason), tally in tallies.buckets.items():
        if action == "token.refresh":
            counts[("refresh", "refreshed" if outcome == "ok" else f"failed: {reason}")] += (
                tally.count)
        elif action == "connection.needs_reauth":
            counts[("refresh", f"re-consent needed: {REASONS.get(reason, reason)}")] += (
                tally.count)
        elif action == "token.handout" and outcome != "ok":
            counts[("refusal", reason or outcome)] += tally.count
    return [(kind, what, n) for (kind, what), n in counts.most_common()]


@bp.get("")
def index() -> str:
    """Show connections, hand-outs, refreshes, Google's latency, the worker, keys and clients."""
    now, tenant = guard.now(), access.tenant_id()
    week = _hours(now, 24 * 7)
    with get_db().transaction(write=False) as session:
        tallies = audit.tallies(session, tenant, week[0], ACTIONS)
        counts = users.connection_counts(session, tenant)
        needing = users.list_connections(session, tenant, "needs_reauth",
                                         limit=NEEDS_REAUTH_SHOWN)
        waiting = audit.waiting(session, tenant)
        worker = worker_seen(session, now)
        keys = key_rotation.list_keys(session, tenant)
        clients = api_clients.list_clients(session, tenants.tenant_by_id(session, tenant))
        expiring = [e for e in certificates.inventory(session, tenant) if e.expires_within(now)]
        security = sorted(risc.security_event_counts(session, tenant, week[0]).items())
    day = week[-24:]
    day_tallies = audit.Tallies(since=day[0], partial=tallies.partial, buckets={
        key: tally for key, tally in tallies.buckets.items() if key[0] >= day[0]})
    clients.sort(key=lambda c: (c.last_used_at is None, -(c.last_used_at or now).timestamp()))
    return render_template(
        "admin/overview.html", now=now, counts=counts, needing=needing, reasons=REASONS,
        day=_handouts(day_tallies, day, days=False), week=_handouts(tallies, week, days=True),
        latency=_latency(day_tallies, day), outcomes_day=_outcomes(day_tallies),
        outcomes_week=_outcomes(tallies), partial=tallies.partial, waiting=waiting,
        worker=worker, keys=keys, clients=clients, expiring=expiring, security=security,
        risc_on=current_app.config["BROKER"].RISC,
    )
