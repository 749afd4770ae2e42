"""Single-flight refresh across real processes on PostgreSQL: one Google call per stampede."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, Connection
from tests.conftest import MASTER_KEYS
from tests.plugins.world import World, broker_config
from tests.ports import free_port

REQUESTS = 200
PROCESSES = 4
# Threads per process: PostgreSQL's 100 connections are shared with other test runs, so each
# process serves at most this many requests at once (the rest queue in its accept backlog).
THREADS = 12


@contextmanager
def served(world: World, tmp_path: Path, workers: int, **settings: Any) -> Iterator[str]:
    """Serve the broker from `workers` gunicorn processes on this test's database."""
    port = free_port()
    config = broker_config(world.emulator, **settings)
    env = {
        **os.environ,
        **{f"BROKER_{k}": str(v) for k, v in config.items()},
        "BROKER_DATABASE_URL": world.app.config["BROKER"].database_url,
        "BROKER_MASTER_KEYS": MASTER_KEYS,
        "BROKER_INSTANCE_PATH": str(tmp_path / "served"),
        "BROKER_SECRET_KEY": "stampede",
        "BROKER_API_RATE_LIMIT": "off",
        "BROKER_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.tokens.serve", str(port), str(workers),
         str(THREADS)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.2)
        time.sleep(1.5)  # let every worker finish booting
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
        log.close()


class ConnectionSampler:
    """Sample PostgreSQL's connection count for this database while a stampede runs."""

    def __init__(self, world: World) -> None:
        self.engine = get_db(world.app).engine
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                count = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                )).scalar_one()
                self.peak = max(self.peak, int(count))
                conn.rollback()
                time.sleep(0.01)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def stampede(url: str, world: World, body: dict[str, Any], n: int = REQUESTS) -> list[Any]:
    """Fire n concurrent token requests; return (status, body) pairs."""

    async def run() -> list[Any]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            async def one() -> tuple[int, Any]:
                response = await client.post(
                    "/api/v1/token", json=body, headers={"Authorization": world.auth}
                )
                return response.status_code, response.json()

            return await asyncio.gather(*(one() for _ in range(n)))

    # Its own thread: a session-scoped Playwright may hold this thread's event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def refreshes(world: World) -> int:
    """Return the emulator's refresh counter."""
    return int(world.emulator.calls()["token"]["refresh_token"])


def make_stale(world: World) -> None:
    """Expire the stored access tokens so the next fetch must refresh."""
    with get_db(world.app).transaction() as session:
        session.execute(update(AccessToken).values(expires_at=utcnow()))


@pytest.fixture
def stale_world(postgres_only: None, make_world: Callable[..., World]) -> World:
    """A world on PostgreSQL whose one stored token is stale."""
    world = make_world()
    assert world.token().status_code == 200
    make_stale(world)
    return world


def test_stampede_of_200_from_4_processes_refreshes_once(
    stale_world: World, tmp_path: Path
) -> None:
    world = stale_world
    with served(world, tmp_path, PROCESSES) as url:
        before = refreshes(world)
        world.emulator.fault("token", latency_ms=400)
        with ConnectionSampler(world) as sampler:
            started = time.monotonic()
            answers = stampede(url, world, {"user": world.user.email})
            elapsed = time.monotonic() - started
        assert [s for s, _ in answers] == [200] * REQUESTS, answers[:3]
        assert len({b["access_token"] for _, b in answers}) == 1
        assert refreshes(world) - before == 1
        # At most one connection per serving thread; waiters hold none while Google thinks.
        assert sampler.peak <= PROCESSES * THREADS + 2
        print(f"\nstampede: {REQUESTS} requests, {PROCESSES}x{THREADS} threads, 1 upstream call, "
              f"peak {sampler.peak} DB connections, {elapsed:.2f}s")

        first = answers[0][1]["access_token"]
        before = refreshes(world)
        world.emulator.fault("token", latency_ms=400)
        with ConnectionSampler(world) as sampler:
            rejected = stampede(url, world, {"user": world.user.email, "rejected_token": first})
        assert [s for s, _ in rejected] == [200] * REQUESTS
        tokens = {b["access_token"] for _, b in rejected}
        assert len(tokens) == 1 and first not in tokens
        assert refreshes(world) - before == 1
        print(f"rejected_token stampede: {REQUESTS} requests, 1 upstream call, "
              f"peak {sampler.peak} DB connections")


def test_killed_lease_holder_is_replaced_after_the_lease_expires(
    stale_world: World, tmp_path: Path
) -> None:
    world = stale_world
    # A long budget: the holder never gives up on its own, however late the kill lands.
    with served(world, tmp_path, 1, REFRESH_BUDGET=60, GOOGLE_TIMEOUT=90) as url:
        before = refreshes(world)
        world.emulator.fault("token", latency_ms=60_000)
        def hold() -> None:
            with pytest.raises(httpx.HTTPError):  # its process dies under it
                httpx.post(url + "/api/v1/token", json={"user": world.user.email},
                           headers={"Authorization": world.auth}, timeout=15)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        owner = None
        for _ in range(100):
            with get_db(world.app).transaction(write=False) as session:
                owner = session.scalar(select(Connection.refresh_lease_owner))
            if owner:
                break
            time.sleep(0.05)
        assert owner, "the served broker never claimed the lease"
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)  # the lease holder dies mid-call
        world.emulator.clear_faults()
        # Its lease, shortened to a second so the test need not wait out the long budget.
        lease_until = utcnow() + dt.timedelta(seconds=1)
        with get_db(world.app).transaction() as session:
            assert session.scalar(select(Connection.refresh_lease_owner)) == owner
            session.execute(update(Connection).values(refresh_lease_until=lease_until))
        # The next caller waits (holding no connection) until the dead holder's lease
        # expires, then claims it and refreshes itself, all within its own budget.
        before = refreshes(world)
        response = world.token()
        assert response.status_code == 200, response.json
        assert utcnow() >= lease_until
        assert refreshes(world) - before == 1
        holder.join(timeout=5)
