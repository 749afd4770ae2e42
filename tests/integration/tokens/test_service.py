"""The token service from its collaborators: the injected clock and sleep, never the wall's."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from broker.clock import utcnow
from broker.db import get_db
from broker.google import get_google
from broker.keys import get_keys
from broker.models import AuditEvent, Connection
from broker.scopes import scope_key
from broker.tokens import TokenService, Want, get_tokens
from tests.conftest import Clock
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, World, broker_config


class MovingSleep:
    """A sleep that records each delay and moves the test clock instead of waiting."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds=seconds)


def refreshes(world: World) -> int:
    """Return how many refresh calls the emulator's token endpoint received."""
    return int(world.emulator.calls()["token"]["refresh_token"])


def stored(world: World) -> Connection:
    """Return the world's connection as stored now."""
    with get_db(world.app).transaction(write=False) as session:
        row = session.scalar(select(Connection).where(Connection.user_id == world.user.id))
        assert row is not None
        return row


@pytest.fixture
def roomy_world(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> World:
    """A world whose refresh budget leaves room for any wait, so only the sleep decides."""
    return make_world(app=make_app(**broker_config(emulator, REFRESH_BUDGET=60)))


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [({"Retry-After": "2"}, 2.0, 2.0),  # Google's own Retry-After is waited exactly
     (None, 0.05, 0.1)],  # else the first backoff step: half of 0.1 s plus jitter
)
def test_refresh_retry_waits_through_the_apps_sleep(
    roomy_world: World, clock: Clock, headers: dict[str, str] | None, low: float, high: float,
) -> None:
    world = roomy_world
    clock.now = started = utcnow().replace(microsecond=0)
    sleep = MovingSleep(clock)
    world.app.extensions["broker.clock"] = clock
    world.app.extensions["broker.sleep"] = sleep
    world.emulator.fault("token", status=503, count=1, headers=headers)
    response = world.token()
    assert response.status_code == 200, response.json
    assert refreshes(world) == 2
    [delay] = sleep.delays
    assert low <= delay <= high
    # The token was stored after the wait, on the clock the sleep moved.
    row = stored(world)
    assert row.status == "active" and row.last_refresh_at is not None
    assert abs((row.last_refresh_at - started).total_seconds() - delay) < 0.001


def test_a_service_refreshes_by_the_clock_it_was_given(world: World, clock: Clock) -> None:
    app = world.app
    clock.now = utcnow().replace(microsecond=0) - dt.timedelta(days=3)  # not the app's clock
    service = TokenService(
        db=get_db(app), keys=lambda: get_keys(app), google=lambda: get_google(app),
        settings=app.config["BROKER"], clock=clock, sleep=MovingSleep(clock),
        owner="test-owner",
    )
    assert service is not get_tokens(app)
    scopes = [READONLY]
    assert world.connection is not None
    want = Want(world.connection.id, world.tenant.id, world.user.id, scopes,
                scope_key(scopes), 0, False, actor_id="worker")
    issued = service.obtain(want, time.monotonic() + 30)
    row = stored(world)
    assert row.last_refresh_at == clock.now
    assert issued.expires_at - clock.now > dt.timedelta(minutes=50)
    with get_db(app).transaction(write=False) as session:
        at = session.scalar(select(AuditEvent.at).where(AuditEvent.action == "token.refresh"))
    assert at == clock.now


def _transient_refreshes(world: World) -> float:
    """Return the broker_refreshes_total{result="transient"} counter from /metrics."""
    text = world.app.test_client().get("/metrics").get_data(as_text=True)
    prefix = 'broker_refreshes_total{result="transient"} '
    return sum(float(line[len(prefix):]) for line in text.splitlines()
               if line.startswith(prefix))


def test_failure_kinds_keep_their_strings_in_rows_audit_and_metrics(world: World) -> None:
    before = _transient_refreshes(world)
    # A Retry-After beyond the budget: no retry, so no wait at all.
    world.emulator.fault("token", status=503, count=-1, headers={"Retry-After": "30"})
    response = world.token()
    assert response.status_code == 503 and response.json["error"] == "upstream_unavailable"
    row = stored(world)
    assert (row.status, row.status_reason) == ("degraded", "upstream_transient")
    with get_db(world.app).transaction(write=False) as session:
        reason = session.scalar(select(AuditEvent.reason).where(
            AuditEvent.action == "token.refresh", AuditEvent.outcome == "error"))
    assert reason == "transient" and type(reason) is str
    assert _transient_refreshes(world) == before + 1
    world.emulator.clear_faults()
