"""Gmail through the broker: egress refused before anything leaves, per-method policy, the
quota governor, Gmail's quota signals, and the audit of every call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import get_db
from broker.models import AuditEvent
from broker.tenancy import clients
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, World, broker_config

PROFILE = "/proxy/gmail/v1/users/me/profile"


def _gmail_calls(world: World) -> int:
    return int(world.emulator.calls()["gmail"])


def _events(app: Flask, action: str) -> list[AuditEvent]:
    with get_db(app).transaction(write=False) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.at, AuditEvent.id)))


def _bearer(world: World, api: FlaskClient) -> dict[str, str]:
    issued = api.post("/api/v1/proxy/token", json={"user": world.user.email},
                      headers={"Authorization": world.auth})
    assert issued.status_code == 200, issued.json
    assert issued.headers["Cache-Control"] == "no-store"
    return {"Authorization": "Bearer " + issued.json["proxy_token"]}


def test_egress_refusals_never_reach_gmail_and_are_audited(world: World) -> None:
    api = world.app.test_client()
    bearer = _bearer(world, api)
    before = _gmail_calls(world)
    refused = {
        "/proxy/gmail/v1/users/me/../me/profile": "egress_refused",
        "/proxy/gmail/v1/users/me/./profile": "egress_refused",
        "/proxy/gmail/v1/users/me%2Fprofile": "egress_refused",
        "/proxy/gmail/v1/users/me%5Cprofile": "egress_refused",
        "/proxy/gmail/v1/users/me\\profile": "egress_refused",
        "/proxy/gmail//v1/users/me/profile": "egress_refused",
        "/proxy/gmail/v1/users/me/profile%0d%0aX-Evil:%201": "egress_refused",
        "/proxy/gmail/v1/users/me/profile%00": "egress_refused",
        "/proxy/http://evil.example/gmail/v1/users/me/profile": "egress_refused",
        "/proxy/gmail/v1/users/me/unknown-method": "egress_refused",
        "/proxy/gmail/v1/users/me/profile?access_token=ya29.x": "egress_refused",
        "/proxy/batch/gmail/v1": "batch_not_supported",
    }
    for path, code in refused.items():
        answer = api.get(path, headers=bearer)
        assert (answer.status_code, answer.json["error"]) == (400, code), (path, answer.json)
    assert _gmail_calls(world) == before  # nothing reached the emulator
    denied = [e for e in _events(world.app, "proxy.call") if e.outcome == "denied"]
    assert len(denied) == len(refused)
    assert all(e.subject_user_id is None and e.actor_id == world.client_id for e in denied)


def test_a_call_is_served_audited_twice_and_never_shows_the_google_token(world: World) -> None:
    api = world.app.test_client()
    answer = api.get(f"/proxy/gmail/v1/users/{world.user.email}/profile",
                     headers={"Authorization": world.auth}, buffered=True)
    assert answer.status_code == 200, answer.data
    assert answer.json["emailAddress"] == world.user.email
    assert "www-authenticate" not in {k.lower() for k in answer.headers.keys()}
    [call] = _events(world.app, "proxy.call")
    [result] = _events(world.app, "proxy.result")
    assert call.outcome == "ok" and call.scopes == [READONLY]  # the narrowest the method takes
    assert call.details["method"] == "gmail.users.getProfile"
    assert result.details["status"] == 200 and result.details["bytes_down"] == len(answer.data)
    token = world.token().json["access_token"]
    assert token not in repr(call.details) + repr(result.details) + answer.get_data(as_text=True)


def test_users_and_credentials_are_checked(
    world: World, clock: Any, make_app: Callable[..., Flask], emulator: EmulatorControls,
) -> None:
    api = world.app.test_client()
    bearer = _bearer(world, api)
    before = _gmail_calls(world)
    other = api.get("/proxy/gmail/v1/users/someone@else.test/profile", headers=bearer)
    assert (other.status_code, other.json["error"]) == (403, "user_mismatch")
    me = api.get(PROFILE, headers={"Authorization": world.auth})
    assert (me.status_code, me.json["error"]) == (400, "invalid_request")
    forged = api.get(PROFILE, headers={"Authorization": "Bearer bpt1.forged"})
    assert (forged.status_code, forged.json["error"]) == (401, "invalid_token")
    assert "invalid_token" in forged.headers["WWW-Authenticate"]
    google = api.get(PROFILE, headers={"Authorization": "Bearer ya29.a-google-token"})
    assert google.status_code == 401
    with get_db(world.app).transaction() as session:
        clients.disable_client(session, world.client_id)
    world.app.extensions["broker.client_cache"].clear()
    gone = api.get(PROFILE, headers=bearer)
    assert (gone.status_code, gone.json["error"]) == (401, "invalid_token")
    assert _gmail_calls(world) == before


def test_the_method_allowlist_answers_403_naming_the_method(world: World, runner: Any) -> None:
    with get_db(world.app).transaction() as session:
        clients.set_methods(session, world.client_id, ["gmail.users.messages.list"])
    world.app.extensions["broker.client_cache"].clear()
    api = world.app.test_client()
    before = _gmail_calls(world)
    answer = api.get("/proxy/gmail/v1/users/me/messages/abc", headers=_bearer(world, api))
    assert answer.status_code == 403
    assert answer.json["error"] == "method_not_allowed"
    assert answer.json["method"] == "gmail.users.messages.get"
    assert _gmail_calls(world) == before
    [row] = _events(world.app, "client.set_methods")
    assert row.details["after"] == ["gmail.users.messages.list"]


def test_the_governor_answers_429_before_gmail_and_gmail_quota_pauses_the_user(
    make_world: Callable[..., World], make_app: Callable[..., Flask], emulator: EmulatorControls,
) -> None:
    # 8 units a minute: a bucket of 2, so two profile calls (1 unit each) pass and a third waits.
    app = make_app(**broker_config(emulator, GMAIL_USER_QUOTA=8))
    world = make_world(app=app)
    api = app.test_client()
    bearer = _bearer(world, api)
    assert [api.get(PROFILE, headers=bearer, buffered=True).status_code
            for _ in range(2)] == [200, 200]
    before = _gmail_calls(world)
    third = api.get(PROFILE, headers=bearer)
    assert (third.status_code, third.json["error"]) == (429, "rate_limited")
    assert int(third.headers["Retry-After"]) >= 1
    assert _gmail_calls(world) == before

    other = make_world(app=app)  # Gmail says this user is over quota: paused for everyone
    other_bearer = _bearer(other, api)
    body = {"error": {"code": 429, "message": "Too many concurrent requests for user",
                      "errors": [{"domain": "global", "reason": "rateLimitExceeded",
                                  "message": "Too many concurrent requests for user"}]}}
    emulator.fault("gmail", status=429, body=body)
    limited = api.get(PROFILE, headers=other_bearer)
    assert limited.status_code == 429 and limited.json["error"]["code"] == 429
    before = _gmail_calls(other)
    paused = api.get(PROFILE, headers=other_bearer)
    assert (paused.status_code, paused.json["error"]) == (429, "rate_limited")
    assert paused.json["reason"] == "paused"
    assert _gmail_calls(other) == before
    throttled = [e for e in _events(app, "proxy.call") if e.reason == "rate_limited"]
    assert len(throttled) == 2


def test_gmail_unreachable_is_a_503_with_the_call_audited(
    world: World, emulator: EmulatorControls
) -> None:
    emulator.fault("gmail", mode="close")
    api = world.app.test_client()
    answer = api.get(f"/proxy/gmail/v1/users/{world.user.email}/profile",
                     headers={"Authorization": world.auth})
    assert (answer.status_code, answer.json["error"]) == (503, "upstream_unavailable")
    assert answer.headers["Retry-After"] == "1"
    [result] = _events(world.app, "proxy.result")
    assert result.outcome == "error" and result.details["status"] == 0


def test_a_proxy_token_expires(world: World) -> None:
    api = world.app.test_client()
    bearer = _bearer(world, api)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
    world.app.extensions["broker.clock"] = lambda: later
    answer = api.get(PROFILE, headers=bearer)
    assert (answer.status_code, answer.json["error"]) == (401, "invalid_token")
