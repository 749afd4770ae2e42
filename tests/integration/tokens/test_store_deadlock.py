"""A refresh's store that PostgreSQL fails to break a lock cycle is stored again, not lost."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import select, text, update

from broker.clock import utcnow
from broker.db import DEADLOCK_RETRIES, get_db
from broker.keys import get_keys
from broker.models import AccessToken, Connection, DataKey, Webhook, WebhookDelivery
from tests.plugins.world import World

# PostgreSQL fails the first `fail` writes of a token row as it fails a deadlock's victim
# (SQLSTATE 40P01): a sequence counts them, since it survives the victim's rollback.
FAIL_FIRST = """
CREATE SEQUENCE token_writes;
CREATE FUNCTION fail_first_token_writes() RETURNS trigger AS $$
BEGIN
  IF nextval('token_writes') <= {fail} THEN
    RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fail_first_token_writes BEFORE INSERT OR UPDATE ON access_tokens
  FOR EACH ROW EXECUTE FUNCTION fail_first_token_writes();
"""


def _expire(app: Flask) -> None:
    with get_db(app).transaction() as session:
        session.execute(update(AccessToken).values(expires_at=utcnow() - dt.timedelta(minutes=1)))


def _token_writes(app: Flask) -> int:
    with get_db(app).engine.connect() as conn:
        return int(conn.execute(text("SELECT last_value FROM token_writes")).scalar_one())


@pytest.fixture
def failing(world: World, postgres_only: None) -> Iterator[World]:
    """A world whose next refresh will be stored after its token write failed `fail` times."""
    assert world.token().status_code == 200
    _expire(world.app)
    yield world
    with get_db(world.app).engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS fail_first_token_writes ON access_tokens;"
                          " DROP FUNCTION IF EXISTS fail_first_token_writes();"
                          " DROP SEQUENCE IF EXISTS token_writes"))


def _fail_first(app: Flask, fail: int) -> None:
    with get_db(app).engine.begin() as conn:
        conn.execute(text(FAIL_FIRST.format(fail=fail)))


def _degrade(world: World) -> None:
    """Make the next store take the session path: a degraded connection's recovery, which
    also queues a webhook delivery in the store's transaction."""
    with get_db(world.app).transaction() as session:
        session.add(Webhook(tenant_id=world.tenant.id, url="https://hooks.example.test/broker",
                            secret=b"s" * 32, events=["connection.recovered"]))
        session.execute(update(Connection).values(status="degraded"))


@pytest.mark.parametrize("path", ["driver", "session"])
def test_a_store_failed_as_a_deadlocks_victim_is_stored_again(failing: World, path: str) -> None:
    if path == "session":
        _degrade(failing)
    _fail_first(failing.app, 2)
    with get_db(failing.app).transaction(write=False) as session:
        old = session.scalar(select(AccessToken.id))
    answer = failing.token()
    assert answer.status_code == 200, answer.json
    assert _token_writes(failing.app) == 3  # two failed writes, then the stored one
    with get_db(failing.app).transaction(write=False) as session:
        stored = session.scalars(select(AccessToken)).one()
    assert stored.id != old and stored.expires_at > utcnow()
    with get_db(failing.app).transaction(write=False) as session:
        events = session.scalars(select(WebhookDelivery.event)).all()
        status = session.scalar(select(Connection.status))
    # The failed attempts rolled back their webhook rows: one delivery, from the stored one.
    assert events == (["connection.recovered"] if path == "session" else [])
    assert status == "active"


def test_a_store_that_keeps_failing_is_answered_not_retried_forever(failing: World) -> None:
    _fail_first(failing.app, DEADLOCK_RETRIES)
    answer = failing.token()
    assert answer.status_code == 503 and answer.json["error"] == "database_unavailable"
    assert _token_writes(failing.app) == DEADLOCK_RETRIES


def _waiting_on_a_lock(app: Flask) -> bool:
    with get_db(app).engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE connections%'")).scalar_one())


def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30  # a state to reach, not a duration to guess
    while not done():
        assert time.monotonic() < deadline, "the state was never reached"
        time.sleep(0.02)


def test_a_store_reserves_its_nonce_block_before_it_locks_the_connection(
    world: World, postgres_only: None
) -> None:
    """A re-seal batch locks connection rows, then the data key: a store that has no nonce
    block left must not hold the data key while it waits for the connection row."""
    assert world.token().status_code == 200
    _expire(world.app)
    get_keys(world.app).forget()  # this process holds no nonce block now
    refreshes = world.emulator.calls()["token"].get("refresh_token", 0)
    answers: list[int] = []
    hand_out = threading.Thread(target=lambda: answers.append(world.token().status_code))
    engine = get_db(world.app).engine
    with engine.connect() as holder, engine.connect() as prober:
        try:
            world.emulator.fault("token", latency_ms=60_000)  # held until faults are cleared
            hand_out.start()
            _until(lambda: world.emulator.calls()["token"].get("refresh_token", 0) > refreshes)
            # Google answers only once the connection row is locked, as a re-seal batch does.
            holder.execute(select(Connection.id).with_for_update())
            world.emulator.clear_faults()
            _until(lambda: _waiting_on_a_lock(world.app))
            # The batch's next step: the tenant's data key, which the store must not hold.
            locked = prober.execute(
                select(DataKey.id).where(DataKey.tenant_id == world.tenant.id)
                .with_for_update(nowait=True)).all()
            assert locked
            prober.rollback()
        finally:
            holder.rollback()
            world.emulator.clear_faults()
            if hand_out.ident is not None:
                hand_out.join(60)
    assert answers == [200]


# The first write of a data key fails, as a connection lost mid-transaction would.
FAIL_FIRST_KEY_WRITE = """
CREATE SEQUENCE key_writes;
CREATE FUNCTION fail_first_key_write() RETURNS trigger AS $$
BEGIN
  IF nextval('key_writes') = 1 THEN
    RAISE EXCEPTION 'lost' USING ERRCODE = 'internal_error';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fail_first_key_write BEFORE UPDATE ON data_keys
  FOR EACH ROW EXECUTE FUNCTION fail_first_key_write();
"""


def test_a_failed_reservation_apart_leaves_the_seal_to_the_store(failing: World) -> None:
    """Google minted the token already: a reservation that fails must not lose it."""
    get_keys(failing.app).forget()
    engine = get_db(failing.app).engine
    with engine.begin() as conn:
        conn.execute(text(FAIL_FIRST_KEY_WRITE))
    try:
        answer = failing.token()
        with engine.connect() as conn:
            writes = conn.execute(text("SELECT last_value FROM key_writes")).scalar_one()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER fail_first_key_write ON data_keys;"
                              " DROP FUNCTION fail_first_key_write(); DROP SEQUENCE key_writes"))
    assert answer.status_code == 200, answer.json
    assert writes == 2  # the reservation apart failed; the store's own succeeded
    with get_db(failing.app).transaction(write=False) as session:
        stored = session.scalars(select(AccessToken)).one()
    assert stored.expires_at > utcnow()
