"""The token lane (broker/api/lane.py) answers as Flask's view does, and only when it may."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, request_started
from sqlalchemy import select
from werkzeug.test import Client, TestResponse

from broker.api.lane import TokenLane
from broker.db import get_db
from broker.models import AuditEvent
from tests.plugins.world import World, basic

IP = "203.0.113.7"
# Headers whose values differ between two answers by nature (the date, a fresh request id).
VARYING = {"date", "x-request-id"}


def _send(target: Any, world: World, data: bytes, headers: dict[str, str],
          environ: dict[str, str] | None = None) -> TestResponse:
    client = Client(target, TestResponse)
    return client.post("/api/v1/token", data=data, headers=headers,
                       environ_base={"REMOTE_ADDR": IP}, environ_overrides=environ or {})


def _lane(app: Flask) -> TokenLane:
    lane = app.wsgi_app
    assert isinstance(lane, TokenLane)
    return lane


def _flask_hooks(app: Flask) -> list[str]:
    """Count the requests Flask's own dispatch ran (the lane runs none of its hooks)."""
    seen: list[str] = []
    request_started.connect(lambda _sender, **_: seen.append("flask"), app, weak=False)
    return seen


def _audit(world: World) -> list[tuple[Any, ...]]:
    with get_db(world.app).transaction(write=False) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == world.tenant.id)
                               .order_by(AuditEvent.at, AuditEvent.id))
        return [(e.action, e.outcome, e.reason, e.ip, e.actor_id, e.request_id,
                 {k: v for k, v in e.details.items() if k != "expires_at"}) for e in rows]


def _same(lane: TestResponse, flask: TestResponse) -> None:
    assert lane.status == flask.status
    lane_body, flask_body = lane.get_json(), flask.get_json()
    if lane.status_code == 200:
        for body in (lane_body, flask_body):
            body.pop("expires_in")  # measured as each answer left, a second apart at most
    assert lane_body == flask_body
    assert {k.lower(): v for k, v in lane.headers if k.lower() not in VARYING} == {
        k.lower(): v for k, v in flask.headers if k.lower() not in VARYING}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


CASES: dict[str, Callable[[World], tuple[bytes, dict[str, str]]]] = {
    "served": lambda w: (_json({"user": w.user.email}), {}),
    "served with a scope and a request id": lambda w: (
        _json({"user": w.user.email, "scopes": ["gmail.readonly"]}), {"X-Request-Id": "job-7"}),
    "unknown user": lambda w: (_json({"user": "nobody@example.com"}), {}),
    "scope not allowed": lambda w: (_json({"user": w.user.email, "scopes": ["gmail.send"]}), {}),
    "not JSON": lambda w: (b"{not json", {}),
    "duplicate keys": lambda w: (b'{"user": "a@b.c", "user": "d@e.f"}', {}),
    "unknown field": lambda w: (_json({"user": w.user.email, "sudo": True}), {}),
    "min_ttl out of range": lambda w: (_json({"user": w.user.email, "min_ttl": 99999}), {}),
    "another client named": lambda w: (_json({"user": w.user.email, "client_id": "x"}), {}),
    "wrong secret": lambda w: (_json({"user": w.user.email}),
                               {"Authorization": basic(w.client_id, "wrong")}),
    "undecodable Basic": lambda w: (_json({"user": w.user.email}),
                                    {"Authorization": "Basic !!!"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lane_answers_and_audits_as_flask_does(world: World, case: str) -> None:
    data, extra = CASES[case](world)
    headers = {"Authorization": world.auth, "Content-Type": "application/json", **extra}
    world.token()  # the token is stored: both paths below serve it from the fast path
    ran = _flask_hooks(world.app)
    before = len(_audit(world))

    by_lane = _send(world.app, world, data, headers)
    assert ran == []  # served by the lane: Flask's dispatch never ran
    lane_rows = _audit(world)[before:]
    by_flask = _send(_lane(world.app).flask, world, data, headers)
    assert ran == ["flask"]
    flask_rows = _audit(world)[before + len(lane_rows):]

    _same(by_lane, by_flask)
    # A client that fails to authenticate names no tenant: logged and counted, not audited.
    assert len(lane_rows) == len(flask_rows) == (0 if by_lane.status_code == 401 else 1)
    if lane_rows and "X-Request-Id" not in extra:  # each answer made its own id, and audited it
        assert lane_rows[0][5] == by_lane.headers["X-Request-Id"]
        lane_rows, flask_rows = [r[:5] + r[6:] for r in lane_rows], [r[:5] + r[6:] for r in
                                                                     flask_rows]
    assert lane_rows == flask_rows


PASSED_ON = {
    "another content type": ({"Content-Type": "application/x-www-form-urlencoded"},
                             b"user=a", None),
    "JSON with a structured suffix": ({"Content-Type": "application/merge+json"}, b"{}", None),
    "a body naming an assertion": ({}, b'{"user": "a", "client_assertion": "x"}', None),
    "an escaped key": ({}, b'{"us\\u0065r": "a"}', None),
    "a percent sign": ({}, b'{"user": "a%40b"}', None),
    "no Authorization header": ({"Authorization": ""}, b'{"user": "a"}', None),
    "a Bearer header": ({"Authorization": "Bearer abc"}, b'{"user": "a"}', None),
    "a body larger than the hand-out's limit": ({}, b'{"user": "' + b"a" * 17_000 + b'"}', None),
    "a body shorter than its Content-Length": ({}, b'{"user": "a"}', {"CONTENT_LENGTH": "40"}),
    "a chunked body": ({"Transfer-Encoding": "chunked"}, b'{"user": "a"}', None),
}


@pytest.mark.parametrize("case", list(PASSED_ON))
def test_anything_else_goes_to_flask_with_its_body_intact(world: World, case: str) -> None:
    extra, data, environ = PASSED_ON[case]
    headers = {"Authorization": world.auth, "Content-Type": "application/json", **extra}
    headers = {k: v for k, v in headers.items() if v}
    ran = _flask_hooks(world.app)

    by_lane = _send(world.app, world, data, headers, environ)
    assert ran == ["flask"]
    by_flask = _send(_lane(world.app).flask, world, data, headers, environ)
    _same(by_lane, by_flask)
    assert by_lane.status_code in (400, 401, 404, 413, 415)  # refused, or no such user


def test_other_paths_and_methods_go_to_flask(world: World) -> None:
    ran = _flask_hooks(world.app)
    client = world.app.test_client()
    assert client.get("/api/v1/token", headers={"Authorization": world.auth}).status_code == 405
    assert client.post("/api/v1/token/", json={}, headers={"Authorization": world.auth}
                       ).status_code == 404
    assert client.get("/healthz").status_code == 200
    assert ran == ["flask", "flask", "flask"]


def test_a_served_token_carries_every_header_flask_adds(world: World) -> None:
    answer = world.token(headers={"X-Request-Id": "given-1"})
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Pragma"] == "no-cache"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Request-Id"] == "given-1"
    assert int(answer.headers["Content-Length"]) == len(answer.data)
    assert "Strict-Transport-Security" not in answer.headers  # http:// public URL


def test_on_https_the_lane_adds_hsts(make_world: Any, api_app: Flask, make_app: Any,
                                     emulator: Any) -> None:
    from tests.plugins.world import broker_config

    app = make_app(**broker_config(emulator, PUBLIC_URL="https://broker.example.test"))
    world = make_world(app=app)
    answer = world.token()
    assert answer.status_code == 200
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
