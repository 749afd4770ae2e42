"""Refresh at hand-out: down-scoping, rejected_token, lifetimes and each failure class."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, Connection, Policy, WebhookDelivery
from broker.scopes import gmail_only, scope_key
from broker.tokens import Want, get_tokens
from tests.conftest import Clock
from tests.plugins.world import READONLY, SEND, World


def refreshes(world: World) -> int:
    """Return how many refresh calls the emulator's token endpoint received."""
    return int(world.emulator.calls()["token"]["refresh_token"])


def connection(world: World) -> Connection:
    """Return the world's connection as stored now."""
    with get_db(world.app).transaction(write=False) as session:
        row = session.scalar(select(Connection).where(Connection.user_id == world.user.id))
        assert row is not None
        return row


def tokeninfo(world: World, token: str) -> dict[str, Any]:
    """Ask the emulator what a token carries."""
    answer = httpx.get(world.emulator.url + "/tokeninfo", params={"access_token": token})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_down_scoped_tokens_carry_only_the_clients_scopes(world: World) -> None:
    narrow = world.token()
    assert narrow.status_code == 200, narrow.json
    assert gmail_only(tokeninfo(world, narrow.json["access_token"])["scope"].split()) == [READONLY]
    world.client_id, world.client_secret = world.add_client([READONLY, SEND])
    wide = world.token()
    assert wide.status_code == 200, wide.json
    carried = gmail_only(tokeninfo(world, wide.json["access_token"])["scope"].split())
    assert carried == sorted([READONLY, SEND])
    assert gmail_only(wide.json["scopes"]) == sorted([READONLY, SEND])
    with get_db(world.app).transaction(write=False) as session:
        assert len(session.scalars(select(AccessToken)).all()) == 2


def test_broader_answer_is_withheld_unless_the_tenant_allows_it(world: World) -> None:
    body = {"access_token": "ya29.broader", "expires_in": 3599, "token_type": "Bearer",
            "scope": f"{READONLY} {SEND}"}
    world.emulator.fault("token", status=200, body=body)
    refused = world.token()
    assert refused.status_code == 503 and refused.json["error"] == "upstream_unavailable"
    with get_db(world.app).transaction() as session:
        session.execute(update(Policy).values(allow_broader_tokens=True))
    world.emulator.fault("token", status=200, body=body)
    allowed = world.token()
    assert allowed.status_code == 200 and SEND in allowed.json["scopes"]


def test_short_google_lifetime_is_answered_honestly_without_a_loop(world: World) -> None:
    world.emulator.settings(access_token_lifetime=120)
    first = world.token({"user": world.user.email, "min_ttl": 300})
    assert first.status_code == 200 and first.json["expires_in"] <= 120
    again = world.token({"user": world.user.email, "min_ttl": 300})
    assert again.json["access_token"] == first.json["access_token"]
    assert refreshes(world) == 1


def test_rejected_token_refreshes_once_then_cools_down(world: World) -> None:
    first = world.token().json["access_token"]
    second = world.token({"user": world.user.email, "rejected_token": first}).json
    assert second["access_token"] != first and refreshes(world) == 2
    # A late report of the old token gets the new one without calling Google.
    late = world.token({"user": world.user.email, "rejected_token": first}).json
    assert late["access_token"] == second["access_token"] and refreshes(world) == 2
    # The new token reported within the cooldown: no second refresh.
    cooled = world.token({"user": world.user.email, "rejected_token": second["access_token"]})
    assert cooled.json["access_token"] == second["access_token"] and refreshes(world) == 2


@pytest.mark.parametrize(
    ("control", "reason"),
    [("revoke", "revoked_or_expired"), ("password", "revoked_or_expired"),
     ("reauth", "reauth_policy")],
)
def test_invalid_grant_marks_needs_reauth_with_a_reason(
    world: World, control: str, reason: str
) -> None:
    if control == "revoke":
        world.emulator.revoke_account(world.user.email)
    elif control == "password":
        world.emulator.change_password(world.user.email)
    else:
        world.emulator.require_reauth(world.user.email)
    response = world.token()
    assert response.status_code == 409, response.json
    assert response.json["error"] == "reauth_required" and response.json["reason"] == reason
    assert connection(world).status == "needs_reauth"
    assert world.token().status_code == 409 and refreshes(world) == 1
    with get_db(world.app).transaction(write=False) as session:
        events = session.scalars(select(WebhookDelivery.event)).all()
    assert events == []  # no webhook registered: nothing queued


def test_misconfigured_client_is_503_and_leaves_connections_alone(world: World) -> None:
    world.emulator.fault("token", status=401,
                         body={"error": "invalid_client", "error_description": "Unauthorized"})
    response = world.token()
    assert response.status_code == 503 and response.json["error"] == "broker_misconfigured"
    row = connection(world)
    assert row.status == "active" and row.consecutive_failures == 0


@pytest.mark.parametrize(
    "fault",
    [{"status": 503}, {"status": 429}, {"status": 500, "body": {"error": "internal_failure"}},
     {"mode": "close"}, {"latency_ms": 4000}],
)
def test_transient_failures_degrade_and_answer_503_with_retry_after(
    world: World, fault: dict[str, Any]
) -> None:
    world.emulator.fault("token", count=-1, **fault)
    response = world.token()
    assert response.status_code == 503, response.json
    assert response.json["error"] == "upstream_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    row = connection(world)
    assert row.status == "degraded" and row.next_retry_at is not None
    world.emulator.clear_faults()


def test_transient_failure_is_retried_within_the_budget(world: World) -> None:
    world.emulator.fault("token", status=503, count=1)
    response = world.token()
    assert response.status_code == 200 and refreshes(world) == 2
    assert connection(world).status == "active"


def test_degraded_serves_the_still_valid_token_then_recovers(
    world: World, clock: Clock
) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock
    first = world.token().json["access_token"]
    clock.advance(seconds=700)  # 2900 s left: not enough for min_ttl 3000
    world.emulator.fault("token", status=503, count=-1)
    degraded = world.token({"user": world.user.email, "min_ttl": 3000})
    assert degraded.status_code == 200 and degraded.json["access_token"] == first
    assert connection(world).status == "degraded"
    world.emulator.clear_faults()
    clock.advance(seconds=600)  # past the backoff
    recovered = world.token({"user": world.user.email, "min_ttl": 3000})
    assert recovered.status_code == 200 and recovered.json["access_token"] != first
    assert connection(world).status == "active"


def test_unreadable_refresh_token_is_token_unreadable(world: World) -> None:
    with get_db(world.app).transaction() as session:
        row = session.scalars(select(Connection)).one()
        assert row.refresh_token is not None
        row.refresh_token = row.refresh_token[:-2] + b"\x00\x00"
    response = world.token()
    assert response.status_code == 409 and response.json["reason"] == "token_unreadable"
    assert connection(world).status == "needs_reauth"


@pytest.fixture
def lease_world(make_world: Callable[..., World]) -> World:
    """A world (its own app) for lease tests."""
    return make_world()


def test_a_claim_from_an_outdated_read_reads_again_and_calls_google_once(world: World) -> None:
    # The hand-out claims the lease in one statement only while the connection is at the
    # version it read: a read from before a sibling's refresh serves that refresh instead. At
    # the current version the claim trusts the read's verdict (here: refresh) and takes it.
    first = world.token()
    assert first.status_code == 200 and refreshes(world) == 1
    conn = connection(world)
    for seen, calls in ((conn.version - 1, 1), (conn.version, 2)):
        want = Want(conn.id, conn.tenant_id, conn.user_id, [READONLY], scope_key([READONLY]),
                    300, False, seen_version=seen)
        issued = get_tokens(world.app).obtain(want, time.monotonic() + 10)
        assert refreshes(world) == calls
        assert (issued.access_token == first.json["access_token"]) is (calls == 1)
    assert connection(world).version == conn.version + 1  # the second claim refreshed, once
