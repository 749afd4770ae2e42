"""Rate limits: per client before any user read, failed auth and sign-ins per IP, via Redis."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from broker.db import get_db
from tests.factories import make_tenant, make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, SEND, World, basic, broker_config, connect

REDIS = "redis://127.0.0.1:6379/"


@pytest.fixture
def make_broker(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> Callable[..., Flask]:
    """Build brokers whose Google is the emulator."""

    def factory(**overrides: Any) -> Flask:
        return make_app(**broker_config(emulator, **overrides))

    return factory


def world_of(app: Flask, emulator: EmulatorControls) -> World:
    """Return a tenant with a connected user and a client allowed readonly."""
    tenant = make_tenant(app)
    world = World(app, emulator, tenant, make_user(app, tenant), None, "", "")
    world.connection, world.refresh_token = connect(app, emulator, world.user, [READONLY, SEND])
    world.client_id, world.client_secret = world.add_client([READONLY])
    return world


def test_client_limit_comes_before_the_body_and_any_user_read(
    make_broker: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_broker(API_RATE_LIMIT="1/minute")
    world = world_of(app, emulator)
    assert world.token().status_code == 200
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.lower())

    engine = get_db(app).engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        limited = world.token({"user": world.user.email, "min_ttl": "not a number"})
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert limited.status_code == 429 and limited.json["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert not [s for s in statements if "users" in s or "access_tokens" in s or "insert" in s]


def test_limit_is_per_client(
    make_broker: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_broker(API_RATE_LIMIT="1/minute")
    world = world_of(app, emulator)
    assert world.token().status_code == 200
    assert world.token().status_code == 429
    world.client_id, world.client_secret = world.add_client([READONLY])
    assert world.token().status_code == 200


def test_sign_in_starts_are_limited_per_source_ip_with_a_page(
    make_broker: Callable[..., Flask],
) -> None:
    app = make_broker(LOGIN_RATE_LIMIT="2/minute")
    client = app.test_client()

    def start(ip: str) -> Any:
        return client.get("/auth/login", environ_base={"REMOTE_ADDR": ip})

    assert [start("198.51.100.7").status_code for _ in range(2)] == [302, 302]
    limited = start("198.51.100.7")
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert int(limited.headers["Retry-After"]) >= 1
    assert "Too many sign-in attempts" in limited.get_data(as_text=True)
    assert start("198.51.100.8").status_code == 302  # another address has its own count


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix unique to this run in the real Redis; its keys are deleted afterwards."""
    redis = pytest.importorskip("redis")
    store = redis.Redis.from_url(REDIS + "0")
    try:
        store.ping()
    except redis.RedisError:
        pytest.skip("no Redis at " + REDIS)
    prefix = "broker-test-" + secrets.token_hex(6)
    yield prefix
    for key in store.scan_iter(match=prefix + "*"):
        store.delete(key)
    store.close()


def test_two_instances_share_the_limits_through_redis(
    make_broker: Callable[..., Flask], emulator: EmulatorControls, redis_prefix: str
) -> None:
    shared = {"REDIS_URL": REDIS + "0", "REDIS_KEY_PREFIX": redis_prefix,
              "API_RATE_LIMIT": "2/minute", "AUTH_FAILURE_LIMIT": "2/minute",
              "LOGIN_RATE_LIMIT": "1/minute"}
    first, second = make_broker(**shared), make_broker(**shared)
    world = world_of(first, emulator)
    assert world.token().status_code == 200
    assert world.token(client=second.test_client()).status_code == 200
    assert world.token().status_code == 429
    assert world.token(client=second.test_client()).status_code == 429

    bad = {"Authorization": basic(world.client_id, "wrong")}
    for app, code in ((first, 401), (second, 401), (first, 429), (second, 429)):
        answer = app.test_client().post("/api/v1/token", json={}, headers=bad,
                                        environ_base={"REMOTE_ADDR": "192.0.2.33"})
        assert answer.status_code == code

    ip = {"REMOTE_ADDR": "192.0.2.44"}
    assert first.test_client().get("/auth/login", environ_base=ip).status_code == 302
    assert second.test_client().get("/auth/login", environ_base=ip).status_code == 429
