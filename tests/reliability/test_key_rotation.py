"""Master and tenant keys rotated in phases while jobs fetch tokens; the re-seal pass killed and
resumed. No fetch fails, and afterwards every sealed row is on its tenant's newest key."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask
from sqlalchemy import select, text

from broker.cli import cli
from broker.db import get_db
from broker.keys import access_token_bound
from broker.keys.extension import get_keys
from broker.keys.sealed import FileKeyProvider, Keyring, new_key, sealed_version
from broker.keys.service import KeyService
from broker.models import AccessToken, Connection, DataKey, User
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World
from tests.reliability.conftest import broker_env

FETCHERS = 4
BULK = 4000  # extra sealed rows, so a re-seal pass takes long enough to be killed midway


BROKER = [sys.executable, "-c", "from broker.cli import main; main()"]


def _cli(other: Flask, *args: str) -> str:
    """Run a `broker` command from another broker instance (its own keyring and caches)."""
    done = other.test_cli_runner().invoke(cli, list(args))
    assert done.exit_code == 0, (args, done.output)
    return done.output


def _on_newest(app: Flask, tenant_id: uuid.UUID) -> tuple[int, int]:
    """Count a tenant's refresh tokens on its newest key, and all of them."""
    keys = get_keys(app)
    with get_db(app).transaction(write=False) as session:
        newest = keys.current_version(session, tenant_id)
        blobs = session.scalars(select(Connection.refresh_token)
                                .where(Connection.tenant_id == tenant_id)).all()
    return sum(1 for b in blobs if b and sealed_version(b) == newest), len(blobs)


def _bulk_rows(app: Flask, world: World, count: int) -> None:
    """Add `count` connected users to a tenant, each with a sealed refresh token."""
    keys = get_keys(app)
    with get_db(app).transaction() as session:
        users = [
            User(id=uuid.uuid4(), tenant_id=world.tenant.id, role="member", status="active",
                 email=f"bulk{n}@{world.tenant.slug}.test", google_sub=f"bulk-{uuid.uuid4().hex}")
            for n in range(count)
        ]
        session.add_all(users)
        session.flush()
        for n, user in enumerate(users):
            conn = Connection(id=uuid.uuid4(), tenant_id=world.tenant.id, user_id=user.id,
                              google_sub=user.google_sub or "", email=user.email,
                              granted_scopes=[], status="active")
            conn.refresh_token = keys.seal(session, world.tenant.id, conn.id, "refresh_token",
                                           f"1//bulk-{n}".encode())
            session.add(conn)

@contextmanager
def _row_locked(app: Flask, email: str) -> Iterator[Callable[[], bool]]:
    """Hold a lock on one user's connection row; yield a check that another backend waits on it."""
    with get_db(app).engine.connect() as conn:
        conn.execute(select(Connection.id).join(User, User.id == Connection.user_id)
                     .where(User.email == email).with_for_update()).one()
        holder = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

        def blocked() -> bool:
            with get_db(app).engine.connect() as probe:
                return bool(probe.execute(text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder},
                ).scalar_one())

        yield blocked
        conn.rollback()


class Fetchers:
    """Threads that fetch tokens in a loop, each reporting its last token dead to force a
    refresh (and so a seal) on every other call."""

    def __init__(self, worlds: list[World]) -> None:
        self.worlds = worlds
        self.stop = threading.Event()
        self.failures: list[tuple[int, str]] = []
        self.count = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(FETCHERS)]

    def _run(self, n: int) -> None:
        world = self.worlds[n % len(self.worlds)]
        client = world.app.test_client()
        last = None
        while not self.stop.is_set():
            body = {"user": world.user.email}
            if last is not None and self.count % 2:
                body["rejected_token"] = last
            answer = world.token(body, client=client)
            with self._lock:
                self.count += 1
                if answer.status_code != 200:
                    self.failures.append((answer.status_code, answer.get_data(as_text=True)))
                    return
            last = answer.json["access_token"]

    def __enter__(self) -> Fetchers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_rotation_in_phases_under_load(
    make_broker: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, tmp_path: Path, postgres_only: None,
) -> None:
    key_file = FileKeyProvider(tmp_path / "master.keys")
    key_file.write({"mk-first": new_key()})
    # A short data-key cache: old keys may retire once no process can hold a block of them.
    app = make_broker(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file.path),
                      REJECTED_TOKEN_COOLDOWN=0, API_RATE_LIMIT="off", DATA_KEY_CACHE_SECONDS=1)
    worlds = [make_world(app=app) for _ in range(3)]
    _bulk_rows(app, worlds[0], BULK)
    other = make_broker(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file.path),
                        DATA_KEY_CACHE_SECONDS=1)
    env = broker_env(app, emulator, tmp_path, DATA_KEY_CACHE_SECONDS=1)
    big = worlds[0].tenant
    killed_midway = False

    with Fetchers(worlds) as fetchers:
        time.sleep(0.3)
        _cli(other, "keys", "add-master")
        time.sleep(0.3)
        _cli(other, "keys", "rotate-master")
        time.sleep(0.3)
        for world in worlds:
            _cli(other, "keys", "rotate-tenant", world.tenant.slug, "--no-reseal")
        time.sleep(0.3)
        # A re-seal pass SIGKILLed midway, then resumed to completion. A lock held on the
        # last bulk row stops the pass there, so the kill lands midway however fast it runs.
        with _row_locked(app, f"bulk{BULK - 1}@{big.slug}.test") as blocked:
            process = subprocess.Popen([*BROKER, "keys", "reseal", big.slug], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not blocked() and process.poll() is None:
                assert time.monotonic() < deadline, "the re-seal pass never reached the lock"
                time.sleep(0.05)
            killed_midway = process.poll() is None
            process.kill()
            process.wait(timeout=10)
        done, total = _on_newest(app, big.id)
        time.sleep(1.2)  # past the data-key cache: every fetcher now seals under the new keys
        for world in worlds:
            _cli(other, "keys", "reseal", world.tenant.slug)
        _cli(other, "keys", "retire-master", "mk-first")
        time.sleep(0.3)
    assert not fetchers.failures, fetchers.failures[:3]
    assert fetchers.count > 50
    assert killed_midway and 0 < done < total, (killed_midway, done, total)

    # Every sealed value opens and sits on its tenant's newest key; old keys are retired.
    fresh = KeyService(Keyring(key_file))
    with get_db(app).transaction(write=False) as session:
        for world in worlds:
            newest = fresh.current_version(session, world.tenant.id)
            old = session.scalars(select(DataKey).where(
                DataKey.tenant_id == world.tenant.id, DataKey.version != newest)).all()
            assert old and all(k.retired_at is not None for k in old)
        conns = session.scalars(select(Connection)).all()
        for conn in conns:
            assert conn.refresh_token is not None
            assert sealed_version(conn.refresh_token) == fresh.current_version(
                session, conn.tenant_id)
            fresh.open(session, conn.tenant_id, conn.id, "refresh_token", conn.refresh_token)
        for tok, tenant_id in session.execute(
            select(AccessToken, Connection.tenant_id)
            .join(Connection, Connection.id == AccessToken.connection_id)
        ):
            assert sealed_version(tok.token) == fresh.current_version(session, tenant_id)
            fresh.open(session, tenant_id, tok.id, "access_token", tok.token,
                       bound=access_token_bound(tok.connection_id, tok.scope_key))
        masters = {k.master_key_id for k in session.scalars(select(DataKey))
                   if k.retired_at is None}
        assert "mk-first" not in masters
    # And the broker that lived through it all still serves every tenant.
    for world in worlds:
        assert world.token().status_code == 200

