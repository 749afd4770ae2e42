"""`broker worker`'s refresh thread, its stop, and how due tokens are found (issue 18)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select, update

from broker import worker
from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, Connection
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config

DEADLINE = 60.0  # a bound on a wait for a condition, never the condition itself


class _Stop(Exception):
    """Raised by a test's sleep to end the worker's endless loop."""


def refreshes(world: World) -> int:
    """Return the emulator's refresh counter."""
    return int(world.emulator.calls()["token"]["refresh_token"])


def expire_in(app: Flask, user_ids: dict[object, int]) -> None:
    """Set each user's stored tokens to expire in the given number of minutes."""
    with get_db(app).transaction() as session:
        for user_id, minutes in user_ids.items():
            conn_id = session.scalar(select(Connection.id).where(Connection.user_id == user_id))
            session.execute(update(AccessToken).where(AccessToken.connection_id == conn_id)
                            .values(expires_at=utcnow() + dt.timedelta(minutes=minutes)))


def last_refresh(app: Flask, user_id: object) -> dt.datetime | None:
    with get_db(app).transaction(write=False) as session:
        return session.scalar(select(Connection.last_refresh_at)
                              .where(Connection.user_id == user_id))


def test_the_loop_refreshes_in_a_thread_of_its_own(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    assert world.token().status_code == 200
    expire_in(world.app, {world.user.id: 5})
    before = refreshes(world)

    def sleep(_seconds: float) -> None:
        # The main thread's pass is done; wait (bounded) for the refresh thread's work.
        deadline = time.monotonic() + DEADLINE
        while refreshes(world) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        raise _Stop

    world.app.extensions["broker.sleep"] = sleep
    caplog.set_level(logging.INFO, logger="broker.worker")
    with pytest.raises(_Stop):
        worker.run(world.app, interval=5.0)
    assert refreshes(world) == before + 1
    passes = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "worker"]
    refreshed = [r for r in caplog.records if getattr(r, "event", "") == "worker_refresh"]
    if get_db(world.app).is_sqlite:  # one writer: refreshes stay in the main pass
        assert passes and "'refresh_due': 1" in passes[0] and refreshed == []
        return
    assert passes and all("refresh_due" not in m for m in passes)
    assert [(r.getMessage(), r.threadName) for r in refreshed] == [
        ("worker refreshed 1", "refresh-due")]
    assert not any(t.name == "refresh-due" for t in threading.enumerate())  # joined on exit


def test_a_stop_ends_the_loop_after_its_pass(world: World) -> None:
    stop = threading.Event()

    def sleep(_seconds: float) -> None:
        raise AssertionError("a loop given a stop event pauses on it, not on the app's sleep")

    world.app.extensions["broker.sleep"] = sleep
    stop.set()
    worker.run(world.app, interval=60.0, stop=stop)  # returns: no pass, no pause
    assert not any(t.name == "refresh-due" for t in threading.enumerate())


def test_a_stop_during_refreshes_stores_those_in_flight_first(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture,
) -> None:
    # Budgets far beyond the test: only the release below ends Google's wait.
    app = make_app(**broker_config(emulator, GOOGLE_TIMEOUT=120, REFRESH_BUDGET=120))
    worlds = [make_world(app=app) for _ in range(2)]
    for w in worlds:
        assert w.token().status_code == 200
    expire_in(app, {w.user.id: 5 for w in worlds})
    seen = [last_refresh(app, w.user.id) for w in worlds]
    before = refreshes(worlds[0])
    emulator.fault("token", latency_ms=110_000, count=-1)  # held until the faults are cleared
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="broker.worker")
    loop = threading.Thread(target=worker.run, args=(app,),
                            kwargs={"interval": 60.0, "stop": stop}, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while refreshes(worlds[0]) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refreshes(worlds[0]) == before + 2  # both calls wait at Google
        stop.set()  # what SIGTERM's handler does
        loop.join(0.5)
        assert loop.is_alive()  # it waits for the answers Google is about to give
    finally:
        emulator.clear_faults()
    loop.join(DEADLINE)
    assert not loop.is_alive()
    assert refreshes(worlds[0]) == before + 2
    with get_db(app).transaction(write=False) as session:
        leased = session.scalars(select(Connection.refresh_lease_owner)
                                 .where(Connection.user_id.in_([w.user.id for w in worlds])))
        assert list(leased) == [None, None]
    for w, old in zip(worlds, seen, strict=True):
        stored = last_refresh(app, w.user.id)
        assert stored is not None and old is not None and stored > old  # not thrown away
    assert not [r for r in caplog.records if "still in flight" in r.getMessage()]


def test_a_set_stop_claims_nothing_more(world: World) -> None:
    assert world.token().status_code == 200
    expire_in(world.app, {world.user.id: 5})
    before, refreshed = refreshes(world), last_refresh(world.app, world.user.id)
    stop = threading.Event()
    stop.set()
    assert worker.refresh_due(world.app, stop=stop) == 0
    assert refreshes(world) == before
    assert last_refresh(world.app, world.user.id) == refreshed
    assert worker.refresh_due(world.app) == 1  # still due: nothing was claimed and dropped


def test_the_soonest_expiring_tokens_are_refreshed_first(
    api_app: Flask, make_world: Callable[..., World],
) -> None:
    worlds = [make_world(app=api_app) for _ in range(3)]
    for w in worlds:
        assert w.token().status_code == 200
    expire_in(api_app, {w.user.id: minutes for w, minutes in zip(worlds, (8, 2, 5), strict=True)})
    one = worker.Windows(parallel=1, refresh_batch=1)
    seen = [last_refresh(api_app, w.user.id) for w in worlds]
    order = []
    for _ in range(3):
        assert worker.refresh_due(api_app, one) == 1
        now = [last_refresh(api_app, w.user.id) for w in worlds]
        order += [i for i in range(3) if now[i] != seen[i]]
        seen = now
    assert order == [1, 2, 0]


def test_a_token_expired_before_the_use_window_is_not_refreshed_as_expiring(
    world: World,
) -> None:
    # A job's hand-out leaves a token valid at its use, so a recently used connection whose
    # token expired longer ago than the window is not what the expiry index walk looks for.
    assert world.token().status_code == 200
    expire_in(world.app, {world.user.id: -90})
    assert worker.refresh_due(world.app) == 0
    expire_in(world.app, {world.user.id: -30})  # expired, but inside the window: refreshed
    assert worker.refresh_due(world.app) == 1


def test_expiring_tokens_filling_every_claim_do_not_starve_idle_grants(
    api_app: Flask, make_world: Callable[..., World],
) -> None:
    busy = [make_world(app=api_app) for _ in range(4)]
    idle = make_world(app=api_app)
    for w in [*busy, idle]:
        assert w.token().status_code == 200
    expire_in(api_app, {w.user.id: 2 for w in busy})  # more than one claim can hold
    old = utcnow() - dt.timedelta(days=30)
    with get_db(api_app).transaction() as session:
        session.execute(update(Connection).where(Connection.user_id == idle.user.id)
                        .values(created_at=old, last_refresh_at=old))
    # One claim of two: before, the expiring tokens took both rows and the idle grant waited.
    assert worker.refresh_due(api_app, worker.Windows(parallel=2, refresh_batch=2)) == 2
    kept = last_refresh(api_app, idle.user.id)
    assert kept is not None and kept > old


def test_an_unreadable_token_in_a_claim_is_marked_and_the_rest_are_refreshed(
    api_app: Flask, make_world: Callable[..., World],
) -> None:
    good, bad = make_world(app=api_app), make_world(app=api_app)
    for w in (good, bad):
        assert w.token().status_code == 200
    expire_in(api_app, {good.user.id: 5, bad.user.id: 5})
    with get_db(api_app).transaction() as session:  # a sealed value that no longer opens
        sealed = session.scalar(select(Connection.refresh_token)
                                .where(Connection.user_id == bad.user.id))
        assert sealed is not None
        session.execute(update(Connection).where(Connection.user_id == bad.user.id)
                        .values(refresh_token=sealed[:-1] + bytes([sealed[-1] ^ 1])))
    before = refreshes(good)
    # Both in one claim: the bad row is marked, the good one leased and refreshed.
    assert worker.refresh_due(api_app, worker.Windows(parallel=2, refresh_batch=2)) == 1
    assert refreshes(good) == before + 1  # no call for the token that would not open
    with get_db(api_app).transaction(write=False) as session:
        rows = dict(session.execute(
            select(Connection.user_id, Connection.status_reason)
            .where(Connection.user_id.in_([good.user.id, bad.user.id]))).all())
        leased = session.scalar(select(Connection.refresh_lease_until)
                                .where(Connection.user_id == bad.user.id))
    assert rows == {good.user.id: None, bad.user.id: "token_unreadable"} and leased is None
    assert last_refresh(api_app, good.user.id) is not None
