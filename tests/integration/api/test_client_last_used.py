"""An API client's last use is recorded, at most once a minute (issue 12 item 6)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from broker.clock import utcnow
from broker.db import get_db
from broker.models import ApiClient
from tests.conftest import Clock
from tests.plugins.world import READONLY, World


def _last_used(world: World, client_id: str) -> dt.datetime | None:
    with get_db(world.app).transaction(write=False) as session:
        return session.scalar(select(ApiClient.last_used_at).where(ApiClient.id == client_id))


def test_last_use_is_written_at_most_once_a_minute(world: World, clock: Clock) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock
    assert _last_used(world, world.client_id) is None
    assert world.token().status_code == 200
    first = clock.now
    assert _last_used(world, world.client_id) == first
    clock.advance(seconds=30)
    assert world.token().status_code == 200
    assert _last_used(world, world.client_id) == first  # within the minute: not written
    clock.advance(seconds=31)
    assert world.token().status_code == 200
    assert _last_used(world, world.client_id) == clock.now


def test_a_failed_authentication_is_not_a_use(world: World, clock: Clock) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock
    idle_id, _ = world.add_client([READONLY])
    world.client_id, world.client_secret = idle_id, "not-the-secret"
    assert world.token().status_code == 401
    assert _last_used(world, idle_id) is None


def test_another_process_write_within_the_minute_is_kept(world: World, clock: Clock) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock
    assert world.token().status_code == 200
    # Another broker process recorded a use 10 s later; this process's next write is due at
    # +60 s of its own, and must not move the value backwards or write twice in a minute.
    with get_db(world.app).transaction() as session:
        row = session.get(ApiClient, world.client_id)
        assert row is not None
        row.last_used_at = other = clock.now + dt.timedelta(seconds=10)
    clock.advance(seconds=61)
    assert world.token().status_code == 200
    assert _last_used(world, world.client_id) == other
