"""Google misbehaving (500, 503, 429, a hang, a dropped connection): valid tokens still served,
expired ones refused with 503 inside the refresh budget, no request waiting longer than it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import update

from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, Connection
from tests.plugins.world import World

BUDGET = 3.0  # REFRESH_BUDGET of the test broker (GOOGLE_TIMEOUT is 2)
SLACK = 1.5  # the test client, the database and a loaded CI machine
FAULTS: list[dict[str, Any]] = [
    {"status": 500, "body": {"error": "internal_failure"}},
    {"status": 503, "body": {"error": "temporarily_unavailable"}},
    {"status": 429, "body": {"error": "rate_limit_exceeded"}},
    {"status": 502},
    {"mode": "hang"},
    {"mode": "close"},
]


def _reset(world: World, expires_in: float) -> None:
    """Make the connection healthy again and its stored token valid for `expires_in` seconds."""
    assert world.connection is not None
    with get_db(world.app).transaction() as session:
        session.execute(
            update(Connection).where(Connection.id == world.connection.id).values(
                status="active", status_reason=None, next_retry_at=None,
                consecutive_failures=0, refresh_lease_until=None, refresh_lease_owner=None,
            )
        )
        session.execute(
            update(AccessToken).where(AccessToken.connection_id == world.connection.id)
            .values(expires_at=utcnow() + dt.timedelta(seconds=expires_in))
        )


def _timed(world: World, **body: Any) -> tuple[Any, float]:
    started = time.monotonic()
    answer = world.token({"user": world.user.email, **body})
    return answer, time.monotonic() - started


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: str(f.get("mode") or f["status"]))
def test_faults_serve_valid_tokens_and_refuse_expired_ones_within_the_budget(
    world_ro: World, fault: dict[str, Any]
) -> None:
    world = world_ro
    first = world.token()
    assert first.status_code == 200
    token = first.json["access_token"]
    world.emulator.fault("token", count=-1, **fault)

    # Valid for 20 minutes but not for min_ttl=3000: a refresh is tried, fails, and the
    # still-valid token is served.
    _reset(world, 1200)
    answer, took = _timed(world, min_ttl=3000)
    assert answer.status_code == 200, answer.json
    assert answer.json["access_token"] == token
    assert took < BUDGET + SLACK, took
    # While the connection backs off, the stored token keeps being served at once.
    answer, took = _timed(world, min_ttl=3000)
    assert answer.status_code == 200 and took < SLACK

    # Expired: 503 upstream_unavailable with Retry-After, inside the budget.
    _reset(world, -1)
    answer, took = _timed(world)
    assert answer.status_code == 503, answer.json
    assert answer.json["error"] == "upstream_unavailable"
    assert int(answer.headers["Retry-After"]) >= 1
    assert took < BUDGET + SLACK, took
    answer, took = _timed(world)
    assert answer.status_code == 503 and took < SLACK  # backing off: Google is not asked again

    with get_db(world.app).transaction(write=False) as session:
        conn = session.get(Connection, world.connection.id)  # type: ignore[union-attr]
        assert conn is not None and conn.status == "degraded"
        assert conn.refresh_lease_until is None
    # Google recovers: the next refresh after the backoff succeeds and the connection heals.
    world.emulator.clear_faults()
    _reset(world, -1)
    answer = world.token()
    assert answer.status_code == 200, answer.json
    assert answer.json["access_token"] != token
    with get_db(world.app).transaction(write=False) as session:
        conn = session.get(Connection, world.connection.id)  # type: ignore[union-attr]
        assert conn is not None and conn.status == "active"


def test_slow_google_inside_the_budget_still_refreshes(world_ro: World) -> None:
    world = world_ro
    world.emulator.fault("token", latency_ms=1200)
    answer, took = _timed(world)
    assert answer.status_code == 200, answer.json
    assert 1.1 < took < BUDGET + SLACK
