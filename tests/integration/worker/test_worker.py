"""The worker's duties, SKIP LOCKED claims on PostgreSQL, and signed, SSRF-guarded webhooks."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from broker import audit, webhooks, worker
from broker.audit import ChainWindows
from broker.clock import utcnow
from broker.connections import RevocationWindows
from broker.connections.revoke import disconnect
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.models import AccessToken, Connection, DataKey, User, WebhookDelivery
from broker.tokens import RefreshWindows
from tests.conftest import Clock
from tests.factories import make_tenant
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config


def refreshes(world: World) -> int:
    """Return the emulator's refresh counter."""
    return int(world.emulator.calls()["token"]["refresh_token"])


def expire_soon(app: Flask, minutes: int = 5) -> None:
    """Make every stored token expire within the worker's window."""
    with get_db(app).transaction() as session:
        session.execute(update(AccessToken).values(
            expires_at=utcnow() + dt.timedelta(minutes=minutes)))


def test_recently_used_tokens_are_refreshed_ahead(world: World) -> None:
    first = world.token().json["access_token"]
    expire_soon(world.app)
    before = refreshes(world)
    assert worker.refresh_due(world.app) == 1
    assert refreshes(world) == before + 1
    assert world.token().json["access_token"] != first
    assert refreshes(world) == before + 1  # the job got the worker's token


def test_keep_alive_refreshes_idle_grants_but_not_suspended_users(
    make_world: Callable[..., World],
) -> None:
    idle, suspended = make_world(), make_world()
    old = utcnow() - dt.timedelta(days=30)
    with get_db(idle.app).transaction() as session:
        session.execute(update(Connection).values(created_at=old, last_refresh_at=old))
        session.execute(update(User).where(User.id == suspended.user.id)
                        .values(status="suspended"))
    before = refreshes(idle)
    assert worker.refresh_due(idle.app) == 1
    assert refreshes(idle) == before + 1
    with get_db(idle.app).transaction(write=False) as session:
        kept = session.scalar(select(Connection.last_refresh_at)
                              .where(Connection.user_id == idle.user.id))
    assert kept is not None and kept > old


def test_two_workers_never_refresh_the_same_row(
    postgres_only: None, make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> None:
    worlds = [make_world() for _ in range(6)]
    for w in worlds:
        assert w.token().status_code == 200
    expire_soon(worlds[0].app)
    other = make_app(**broker_config(emulator))
    before = refreshes(worlds[0])
    emulator.fault("token", latency_ms=300, count=-1)
    counts: list[int] = []
    # Two at a time each, so both workers claim while the other's refreshes are in flight.
    pairs = worker.Windows(parallel=2)
    threads = [threading.Thread(target=lambda a=a: counts.append(worker.refresh_due(a, pairs)))
               for a in (worlds[0].app, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emulator.clear_faults()
    assert sum(counts) == 6 and refreshes(worlds[0]) - before == 6


def test_each_lease_is_claimed_just_before_its_refresh(
    make_app: Callable[..., Flask], emulator: EmulatorControls, make_world: Callable[..., World],
) -> None:
    # Google takes longer than a lease can wait for a whole batch claimed at once: six rows at
    # 0.8 s each would outlive a 2 s lease from the third row on.
    app = make_app(**broker_config(emulator, REFRESH_BUDGET=2))
    worlds = [make_world(app=app) for _ in range(6)]
    for w in worlds:
        assert w.token().status_code == 200
    expire_soon(app)
    before = refreshes(worlds[0])
    emulator.fault("token", latency_ms=800, count=-1)
    try:
        stored = worker.refresh_due(app, worker.Windows(parallel=2))
    finally:
        emulator.clear_faults()
    assert stored == 6 and refreshes(worlds[0]) - before == 6
    with get_db(app).transaction(write=False) as session:
        assert session.scalars(select(Connection.status)).all() == ["active"] * 6


def test_revocations_left_pending_are_retried(world: World) -> None:
    world.emulator.fault("revoke", status=503)
    with get_db(world.app).transaction(write=False) as session:
        conn_id = session.scalars(select(Connection.id)).one()
    assert disconnect(world.app, conn_id) is False
    with get_db(world.app).transaction(write=False) as session:
        assert session.scalars(select(Connection.revocation_pending)).one() is True
    assert worker.retry_revocations(world.app) == 1
    with get_db(world.app).transaction(write=False) as session:
        conn = session.scalars(select(Connection)).one()
        assert conn.refresh_token is None and not conn.revocation_pending
    assert world.token().json["error"] == "not_connected"


class Receiver:
    """A local HTTP endpoint that records webhook deliveries."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver."""
    r = Receiver()
    yield r
    r.close()


def add_hook(world: World, url: str, *, allow_private: bool | None = None) -> str:
    """Register a webhook for the world's tenant (every event); return its secret."""
    if allow_private is None:
        allow_private = world.app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE
    with get_db(world.app).transaction() as session:
        added = webhooks.add(
            session, get_keys(world.app), world.tenant.id, url=url, events=None,
            allow_private=allow_private, actor="test",
        )
    return added.secret


def test_needs_reauth_webhook_is_signed_and_retried(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], receiver: Receiver,
) -> None:
    app = make_app(**broker_config(emulator, WEBHOOK_ALLOW_PRIVATE=True))
    world = make_world(app=app)
    secret = add_hook(world, receiver.url)
    emulator.revoke_account(world.user.email)
    assert world.token().json["reason"] == "revoked_or_expired"
    receiver.statuses = [500]
    assert webhooks.deliver_due(app) == 1
    with get_db(app).transaction() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.attempts == 1 and delivery.delivered_at is None
        assert delivery.next_attempt_at is not None
        delivery.next_attempt_at = utcnow()  # the backoff has passed
    assert worker.run_once(app)["deliver_due"] == 1
    headers, body = receiver.received[-1]
    payload = json.loads(body)
    assert payload["event"] == "connection.needs_reauth"
    assert payload["reason"] == "revoked_or_expired"
    expected = hmac.new(secret.encode(), headers["X-Broker-Timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["X-Broker-Signature"] == "v1=" + expected
    with get_db(app).transaction(write=False) as session:
        assert session.scalars(select(WebhookDelivery.delivered_at)).one() is not None


def test_private_targets_are_refused_without_the_setting(
    world: World, receiver: Receiver
) -> None:
    with pytest.raises(InvalidRequest, match="https"):
        add_hook(world, receiver.url)
    with pytest.raises(InvalidRequest, match="private"):
        add_hook(world, receiver.url.replace("http://", "https://"))
    # A name passes registration and is checked when the worker resolves it to send: here it
    # resolves to loopback (as a rebinding name would), registered as if it had been public.
    local = receiver.url.replace("http://127.0.0.1", "https://localhost")
    add_hook(world, local, allow_private=True)
    with get_db(world.app).transaction() as session:
        webhooks.enqueue(session, world.tenant.id, "connection.revoked", {})
    assert webhooks.deliver_due(world.app) == 1
    with get_db(world.app).transaction(write=False) as session:
        status = session.scalars(select(WebhookDelivery.last_status)).one()
    assert status is not None and status.startswith("refused") and receiver.received == []


def test_deliveries_are_stamped_and_settled_by_the_app_clock(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], receiver: Receiver, clock: Clock,
) -> None:
    app = make_app(**broker_config(emulator, WEBHOOK_ALLOW_PRIVATE=True))
    app.extensions["broker.clock"] = clock
    world = make_world(app=app, connected=False)
    add_hook(world, receiver.url)
    with get_db(app).transaction() as session:
        webhooks.enqueue(session, world.tenant.id, "connection.revoked", {}, now=clock())
    clock.advance(seconds=30)
    assert webhooks.deliver_due(app) == 1
    headers, _ = receiver.received[-1]
    assert headers["X-Broker-Timestamp"] == str(int(clock.now.timestamp()))
    with get_db(app).transaction(write=False) as session:
        delivered = session.scalars(select(WebhookDelivery.delivered_at)).one()
    assert delivered == clock.now


class _Stop(Exception):
    """Raised by a test's sleep to end the worker's endless loop."""


def test_the_loop_pauses_through_the_apps_sleep(app: Flask) -> None:
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise _Stop

    app.extensions["broker.sleep"] = sleep
    with pytest.raises(_Stop):
        worker.run(app, interval=7.5)
    assert pauses == [7.5]  # nothing to do: one pass, then the pause, not a busy loop


def test_only_a_duty_that_filled_its_batch_goes_again_at_once(
    app: Flask, caplog: pytest.LogCaptureFixture,
) -> None:
    # A backlog of audit events to chain: more than one batch's worth, all past the lag.
    at = utcnow() - dt.timedelta(minutes=1)
    with get_db(app).transaction() as session:
        for n in range(worker.Windows().batch + 10):
            audit.record(session, now=at, action="token.handout", tenant_id=None,
                         actor_type="client", actor_id=f"c{n}")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise _Stop

    app.extensions["broker.sleep"] = sleep
    caplog.set_level(logging.INFO, logger="broker.worker")
    with pytest.raises(_Stop):
        worker.run(app, interval=600.0)  # the next full pass is far off
    # Each pass's report, read back from its log line (the broker's own log handler may have
    # formatted the record already, so its args are not to be relied on).
    first, *again = [ast.literal_eval(r.getMessage().removeprefix("worker pass: "))
                     for r in caplog.records if getattr(r, "event", "") == "worker"]
    # Every duty on the first pass (on PostgreSQL refreshes have a thread of their own).
    every = worker.DUTIES if get_db(app).is_sqlite else worker.HOUSEKEEPING
    assert set(first) == {d.__name__ for d in every}
    assert first["chain_audit"] >= worker.Windows().batch
    # Then only the busy ones, until they are done: no purges re-run with every batch.
    assert again and all(set(report) <= {"chain_audit", "fold_audit"} for report in again)
    assert again[-1]["chain_audit"] == 0 and pauses == [600.0]


def test_each_duty_takes_the_workers_windows() -> None:
    # Existing callers pass worker.Windows to any duty: it is each domain's windows at once.
    w = worker.Windows(parallel=2, audit_lag=dt.timedelta(0), batch=7)
    assert isinstance(w, RefreshWindows) and isinstance(w, ChainWindows)
    assert isinstance(w, RevocationWindows)
    assert (w.parallel, w.audit_lag, w.batch) == (2, dt.timedelta(0), 7)
    assert [d.__name__ for d in worker.DUTIES] == [
        "refresh_due", "chain_audit", "fold_audit", "retry_revocations", "deliver_due", "reseal",
        "purge_inactive", "purge_security_events", "purge_assertions",
    ]


def _break_reseal(make_app: Callable[..., Flask]) -> None:
    """Leave a tenant with a row on data key v1 and a current v2 that no longer unwraps."""
    app = make_app()
    tenant = make_tenant(app, "broken")
    with get_db(app).transaction() as session:
        webhooks.add(session, get_keys(app), tenant.id, url="https://hooks.example.com/x",
                     events=None, allow_private=False, actor="test")
    with get_db(app).transaction() as session:
        assert get_keys(app).rotate_tenant(session, tenant.id) == 2
        session.execute(update(DataKey).where(DataKey.tenant_id == tenant.id,
                                              DataKey.version == 2).values(wrapped=b"\0" * 60))


def test_the_loop_logs_a_failed_duty_and_keeps_going(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
) -> None:
    _break_reseal(make_app)
    app = make_app()  # a fresh process: no data key cached
    passes: list[float] = []

    def sleep(seconds: float) -> None:
        passes.append(seconds)
        if len(passes) == 2:
            raise _Stop

    app.extensions["broker.sleep"] = sleep
    caplog.set_level(logging.INFO, logger="broker.worker")
    with pytest.raises(_Stop):
        worker.run(app, interval=1.0)
    failed = [r for r in caplog.records if getattr(r, "event", "") == "worker_duty_failed"]
    assert [r.getMessage() for r in failed] == ["worker duty reseal failed: SealError"] * 2
    assert all(r.exc_info is None for r in failed)  # no traceback without BROKER_DEBUG
    reports = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "worker"]
    assert len(reports) == 2 and all("'reseal': -1" in m for m in reports)
    assert all("'chain_audit': -1" not in m for m in reports)


def test_a_failed_duty_is_logged_with_its_traceback_under_debug(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
) -> None:
    _break_reseal(make_app)
    caplog.set_level(logging.INFO, logger="broker.worker")
    report = worker.run_once(make_app(DEBUG=True))
    assert report["reseal"] == -1
    assert [v for k, v in report.items() if k != "reseal" and v < 0] == []
    failed = [r for r in caplog.records if getattr(r, "event", "") == "worker_duty_failed"]
    assert len(failed) == 1 and failed[0].exc_info is not None
