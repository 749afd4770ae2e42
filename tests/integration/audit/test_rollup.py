"""The overview's hourly counts: folded from chained events, exact with the newest added live."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from broker import audit
from broker.audit import hour_of
from broker.clock import utcnow
from broker.db import get_db
from broker.keys import get_keys
from broker.models import AuditHourly
from broker.tenancy import tenants
from tests.factories import make_tenant

# Half past an hour, after the tenants' own creation events (the chainer refuses events dated
# before its chain's head).
T0 = hour_of(utcnow()) + dt.timedelta(days=2, minutes=30)
H0, H1 = f"{T0:%d %H}", f"{T0 + dt.timedelta(hours=1):%d %H}"
ACTIONS = ("token.handout", "token.refresh")


@pytest.fixture
def rollup_app(make_app: Callable[..., Flask]) -> Flask:
    """The broker app on this run's database."""
    return make_app()


def _event(app: Flask, tenant_id: uuid.UUID | None, at: dt.datetime, action: str = "token.handout",
           outcome: str = "ok", reason: str | None = None, **details: object) -> None:
    with get_db(app).transaction() as session:
        audit.record(session, now=at, action=action, tenant_id=tenant_id, actor_type="client",
                     actor_id="c1", outcome=outcome, reason=reason, details=details)


def _chain(app: Flask) -> None:
    with get_db(app).transaction() as session:
        audit.chain(session, get_keys(app), older_than=T0 + dt.timedelta(days=30))


def _fold(app: Flask, batch: int = 20_000) -> int:
    with get_db(app).transaction() as session:
        return audit.fold(session, batch)


def _counts(app: Flask, tenant_id: uuid.UUID) -> dict[tuple[str, str, str, str], int]:
    with get_db(app).transaction(write=False) as session:
        found = audit.tallies(session, tenant_id, T0 - dt.timedelta(days=1), ACTIONS)
    return {(f"{h:%d %H}", a, o, r): t.count for (h, a, o, r), t in found.buckets.items()}


def _populate(app: Flask) -> tuple[uuid.UUID, uuid.UUID]:
    acme, globex = make_tenant(app, "acme").id, make_tenant(app, "globex").id
    # In time order, as a live broker writes them.
    _event(app, acme, T0, action="token.refresh", google_ms=120)
    _event(app, acme, T0, action="token.refresh", outcome="error", reason="transient",
           google_ms=5000)
    _event(app, globex, T0)
    _event(app, None, T0, action="tenant.delete")  # a system event: no tenant page shows it
    _event(app, acme, T0)
    _event(app, acme, T0 + dt.timedelta(minutes=5), action="token.refresh", google_ms=80)
    for minutes in (10, 20):
        _event(app, acme, T0 + dt.timedelta(minutes=minutes))
    _event(app, acme, T0 + dt.timedelta(hours=1), outcome="denied", reason="ip_not_allowed")
    return acme, globex


EXPECTED = {
    (H0, "token.handout", "ok", ""): 3,
    (H1, "token.handout", "denied", "ip_not_allowed"): 1,
    (H0, "token.refresh", "ok", ""): 2,
    (H0, "token.refresh", "error", "transient"): 1,
}


def test_counts_are_the_same_before_during_and_after_folding(rollup_app: Flask) -> None:
    acme, globex = _populate(rollup_app)
    assert _counts(rollup_app, acme) == EXPECTED  # all live: nothing folded yet
    assert _fold(rollup_app) == 0  # nothing chained, nothing folded
    _chain(rollup_app)
    assert _fold(rollup_app, batch=3) == 3  # part folded, the rest still counted live
    assert _counts(rollup_app, acme) == EXPECTED
    while _fold(rollup_app, batch=3):
        pass
    assert _counts(rollup_app, acme) == EXPECTED
    assert _counts(rollup_app, globex) == {(H0, "token.handout", "ok", ""): 1}
    with get_db(rollup_app).transaction(write=False) as session:
        rows = session.scalar(select(func.count()).select_from(AuditHourly)
                              .where(AuditHourly.action.in_(ACTIONS)))
        assert rows == 5  # four buckets of acme, one of globex; the system event nowhere
    # A new event after the fold is counted live, then folded into the same bucket.
    _event(rollup_app, acme, T0 + dt.timedelta(hours=1, minutes=5))
    bumped = {**EXPECTED, (H1, "token.handout", "ok", ""): 1}
    assert _counts(rollup_app, acme) == bumped
    _chain(rollup_app)
    assert _fold(rollup_app) == 1
    assert _fold(rollup_app) == 0  # folding again adds nothing
    assert _counts(rollup_app, acme) == bumped


def test_google_latency_is_summed_with_its_worst(rollup_app: Flask) -> None:
    acme, _ = _populate(rollup_app)
    _chain(rollup_app)
    _fold(rollup_app)
    with get_db(rollup_app).transaction(write=False) as session:
        found = audit.tallies(session, acme, T0, ["token.refresh"])
    hour = T0.replace(minute=0)
    ok = found.buckets[(hour, "token.refresh", "ok", "")]
    failed = found.buckets[(hour, "token.refresh", "error", "transient")]
    assert (ok.count, ok.google_ms_sum, ok.google_ms_max, ok.google_calls) == (2, 200, 120, 2)
    assert (failed.google_ms_sum, failed.google_ms_max) == (5000, 5000)


def test_a_window_leaves_out_older_hours_and_other_actions(rollup_app: Flask) -> None:
    acme, _ = _populate(rollup_app)
    _event(rollup_app, None, T0 - dt.timedelta(days=9))  # its own (system) chain: not refused
    with get_db(rollup_app).transaction() as session:  # an old event of acme, folded
        session.add(AuditHourly(tenant_id=acme, hour=hour_of(T0 - dt.timedelta(days=9)),
                                action="token.handout", outcome="ok", reason="", count=5,
                                google_ms_sum=0, google_ms_max=0, google_calls=0))
    _chain(rollup_app)
    _fold(rollup_app)
    with get_db(rollup_app).transaction(write=False) as session:
        found = audit.tallies(session, acme, T0 + dt.timedelta(minutes=15), ["token.handout"])
    assert found.since == T0.replace(minute=0)  # the window starts at its hour
    assert {k[1] for k in found.buckets} == {"token.handout"}
    assert sum(t.count for t in found.buckets.values()) == 4
    assert not found.partial


def test_waiting_counts_the_tenants_unchained_events(rollup_app: Flask) -> None:
    acme, globex = _populate(rollup_app)
    with get_db(rollup_app).transaction(write=False) as session:
        # Each tenant's creation waits too; acme has seven events of its own, globex one.
        assert audit.waiting(session, acme) - audit.waiting(session, globex) == 6
    _chain(rollup_app)
    with get_db(rollup_app).transaction(write=False) as session:
        assert audit.waiting(session, acme) == 0


def test_a_deleted_tenants_counts_go_with_it(rollup_app: Flask) -> None:
    acme, globex = _populate(rollup_app)
    _chain(rollup_app)
    _fold(rollup_app)
    with get_db(rollup_app).transaction() as session:
        tenant = tenants.tenant_by_id(session, acme)
        tenants.delete_tenant(session, get_keys(rollup_app), tenant, actor="test")
    with get_db(rollup_app).transaction(write=False) as session:
        left = session.scalars(select(AuditHourly.tenant_id).where(
            AuditHourly.action.in_(ACTIONS))).all()
    assert left == [globex]
