"""Crash consistency: a broker process SIGKILLed at random points while it refreshes tokens, some
kills landing while it holds a refresh lease (Google answers slowly), then started again.

Afterwards every stored token still opens, every refresh token is still accepted by Google, no
lease outlives its budget, and hand-outs work again once the dead holders' leases expire.
BROKER_CRASH_ROUNDS makes a longer run; BROKER_CRASH_SEED replays one run's kill points.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from flask import Flask
from sqlalchemy import func, select

from broker.clock import utcnow
from broker.db import get_db
from broker.google.client import get_google
from broker.keys import access_token_bound
from broker.keys.extension import get_keys
from broker.models import AccessToken, AuditEvent, Connection
from tests.factories import make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, SEND, World, connect
from tests.reliability.conftest import ServedBroker, broker_env

TENANTS = 2
USERS_PER_TENANT = 3
BUDGET = 2  # seconds: the refresh budget, and so the lease length
LATENCY_MS = 300  # Google's token endpoint answers this slowly, so leases are held meanwhile
ROUNDS = int(os.environ.get("BROKER_CRASH_ROUNDS", "5"))
SLACK = dt.timedelta(seconds=1)


def _worlds(make_world: Callable[..., World], app: Flask, emulator: EmulatorControls) -> list[
    World
]:
    """Return one World per connected user: several users in each of several tenants."""
    worlds: list[World] = []
    for _ in range(TENANTS):
        first = make_world()
        worlds.append(first)
        for _ in range(USERS_PER_TENANT - 1):
            user = make_user(app, first.tenant)
            connection, refresh = connect(app, emulator, user, [READONLY, SEND])
            worlds.append(World(app, emulator, first.tenant, user, connection,
                                first.client_id, first.client_secret, refresh))
    return worlds


class Load:
    """One thread per user asking the served broker for tokens, each time reporting the token
    it got last as rejected, so almost every request refreshes."""

    def __init__(self, url: str, worlds: list[World], last: dict[uuid.UUID, str]) -> None:
        self.url = url
        self.worlds = worlds
        self.last = last
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                        for w in worlds]

    def _run(self, world: World) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                body: dict[str, object] = {"user": world.user.email}
                if world.user.id in self.last:
                    body["rejected_token"] = self.last[world.user.id]
                try:
                    response = http.post("/api/v1/token", json=body,
                                         headers={"Authorization": world.auth})
                except httpx.HTTPError:
                    return  # the process died under this request
                with self._lock:
                    self.answers[response.status_code] = (
                        self.answers.get(response.status_code, 0) + 1
                    )
                if response.status_code == 200:
                    self.last[world.user.id] = response.json()["access_token"]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


def _leases(app: Flask) -> list[tuple[str | None, dt.datetime | None]]:
    """Return every connection's lease owner and expiry."""
    with get_db(app).transaction(write=False) as session:
        return [(o, u) for o, u in session.execute(
            select(Connection.refresh_lease_owner, Connection.refresh_lease_until))]


def _held_by(app: Flask, pid: int) -> int:
    """Count the unexpired leases a process holds."""
    now = utcnow()
    return sum(1 for owner, until in _leases(app)
               if owner and owner.split(":")[1] == str(pid) and until and until > now)


def _wait_for_lease(app: Flask, pid: int, timeout: float) -> bool:
    """Wait until the process holds a lease; say whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _held_by(app, pid):
            return True
        time.sleep(0.01)
    return False


def _assert_leases_bounded(app: Flask) -> None:
    """No lease may last longer than one budget from now: a dead holder's lease expires."""
    limit = utcnow() + dt.timedelta(seconds=BUDGET) + SLACK
    for owner, until in _leases(app):
        assert until is None or until <= limit, (owner, until)
        assert (owner is None) == (until is None), (owner, until)


def _assert_tokens_open_and_accepted(app: Flask) -> tuple[int, int]:
    """Open every stored token; refresh every refresh token at Google. Return the counts."""
    keys, google = get_keys(app), get_google(app)
    refresh_tokens: list[str] = []
    access = 0
    with get_db(app).transaction(write=False) as session:
        for conn in session.scalars(select(Connection)):
            assert conn.status == "active", (conn.id, conn.status, conn.status_reason)
            assert conn.refresh_token is not None
            refresh_tokens.append(keys.open(
                session, conn.tenant_id, conn.id, "refresh_token", conn.refresh_token
            ).decode())
        for row in session.scalars(select(AccessToken)):
            conn = session.get(Connection, row.connection_id)
            assert conn is not None
            assert keys.open(session, conn.tenant_id, row.id, "access_token", row.token,
                             bound=access_token_bound(row.connection_id, row.scope_key))
            access += 1
    for refresh_token in refresh_tokens:
        assert google.refresh(refresh_token, [READONLY], timeout=5).access_token
    return len(refresh_tokens), access


def _assert_refreshes_audited(app: Flask) -> int:
    """Each stored refresh bumped its row's version and wrote its audit row in one transaction:
    a kill between the two would leave them apart. Return the number of stored refreshes."""
    with get_db(app).transaction(write=False) as session:
        stored = session.scalar(select(func.sum(Connection.version))) or 0
        audited = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "token.refresh", AuditEvent.outcome == "ok"))
    assert stored == audited, (stored, audited)
    return int(stored)


def _hand_outs_recover(server: ServedBroker, worlds: list[World]) -> float:
    """Ask for every user's token until each is served; return how long the last one took."""
    started = time.monotonic()
    deadline = started + BUDGET * 3 + 5
    pending = list(worlds)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        while pending:
            world = pending[0]
            response = http.post("/api/v1/token", json={"user": world.user.email},
                                 headers={"Authorization": world.auth})
            if response.status_code == 200:
                pending.pop(0)
                continue
            # Only "busy, retry" is acceptable while a dead holder's lease runs out.
            assert response.status_code == 503, (response.status_code, response.text)
            assert time.monotonic() < deadline, f"hand-outs did not recover: {response.text}"
            time.sleep(0.2)
    return time.monotonic() - started


def test_sigkill_during_refreshes_leaves_every_connection_usable(
    postgres_only: None, broker_app: Flask, make_world: Callable[..., World],
    emulator: EmulatorControls, tmp_path: Path,
) -> None:
    app = broker_app
    worlds = _worlds(make_world, app, emulator)
    env = broker_env(app, emulator, tmp_path, REFRESH_BUDGET=BUDGET, GOOGLE_TIMEOUT=1,
                     REJECTED_TOKEN_COOLDOWN=0)
    emulator.fault("token", latency_ms=LATENCY_MS, count=-1)
    server = ServedBroker(env, tmp_path / "served.log")
    seed = int(os.environ.get("BROKER_CRASH_SEED") or time.time_ns())
    print(f"\ncrash: BROKER_CRASH_SEED={seed}")  # shown on failure, to replay the kill points
    rng = random.Random(seed)
    last: dict[uuid.UUID, str] = {}
    orphaned = kills = served = 0
    starting = 0.0
    slices = itertools.cycle([(0.8, 1.6), (0, 0.3), (0.3, 0.8)])
    try:
        for round_ in range(ROUNDS):
            began = time.monotonic()
            server.start()
            starting += time.monotonic() - began
            assert server.process is not None
            pid = server.process.pid
            with Load(server.url, worlds, last) as load:
                if round_ % 3:
                    # Kill some time after the first lease is claimed, each round in its own
                    # slice: while Google thinks, while its answer is stored, or later on.
                    _wait_for_lease(app, pid, 4)
                    time.sleep(rng.uniform(*next(slices)))
                else:
                    time.sleep(rng.uniform(0.05, 1.5))  # anywhere at all, even before a claim
                server.kill()
            served += load.answers.get(200, 0)
            # Between kills a request is served, or told to retry while a dead lease runs out.
            assert set(load.answers) <= {200, 503}, load.answers
            kills += 1
            orphaned += _held_by(app, pid)
            _assert_leases_bounded(app)
        assert orphaned, "no kill landed while a lease was held"
        assert served, "no kill landed after a refresh was stored"

        server.start()  # the survivors' broker: leases left by the dead expire, then it serves
        recovered = _hand_outs_recover(server, worlds)
        server.kill()
    finally:
        server.kill()
    _assert_leases_bounded(app)
    emulator.clear_faults()
    connections, access = _assert_tokens_open_and_accepted(app)
    assert connections == len(worlds) and access >= 1
    refreshes = _assert_refreshes_audited(app)
    assert refreshes >= len(worlds)
    print(f"crash: {kills} kills, {orphaned} orphaned leases, {served} tokens served between "
          f"kills, {refreshes} refreshes stored, "
          f"{connections} connections and "
          f"{access} access tokens open, hand-outs back after {recovered:.1f}s; "
          f"{starting / kills:.1f}s per start")
