"""A database cut mid-run: clean 503 JSON answers while it lasts, recovery without restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from tests.plugins.risc import signed_in
from tests.plugins.world import World
from tests.reliability.tcpproxy import TcpProxy


@pytest.fixture
def proxy(database_url: str, postgres_only: None) -> Iterator[TcpProxy]:
    url = make_url(database_url)
    tcp = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield tcp
    tcp.close()


@pytest.fixture
def proxied_app(make_broker: Callable[..., Flask], database_url: str, proxy: TcpProxy) -> Flask:
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    return make_broker(DATABASE_URL=url.render_as_string(hide_password=False))


@pytest.fixture
def proxied_world(make_world: Callable[..., World], proxied_app: Flask) -> World:
    return make_world(app=proxied_app)


def test_readiness_follows_the_database_and_recovers(proxied_app: Flask, proxy: TcpProxy) -> None:
    client = proxied_app.test_client()
    assert client.get("/readyz").status_code == 200
    proxy.cut()
    down = client.get("/readyz")
    assert down.status_code == 503 and down.json["reason"] == "database_unreachable"
    assert client.get("/healthz").status_code == 200
    proxy.restore()
    assert client.get("/readyz").status_code == 200


def _assert_unavailable(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    assert response.json["error"] == "database_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert "Traceback" not in response.get_data(as_text=True)


def test_api_answers_503_json_during_the_cut_and_recovers(
    proxied_world: World, proxy: TcpProxy
) -> None:
    world = proxied_world
    warm = world.token()
    assert warm.status_code == 200, warm.json
    client = world.app.test_client()
    auth = {"Authorization": world.auth}
    proxy.cut()
    try:
        # The client row is cached: the hand-out's own reads and writes meet the cut.
        for _ in range(3):
            _assert_unavailable(world.token())
        _assert_unavailable(world.token({"user": world.user.email, "min_ttl": 3000}))
        _assert_unavailable(client.get("/api/v1/connections", headers=auth))
        assert client.get("/readyz").status_code == 503
    finally:
        proxy.restore()
    assert client.get("/readyz").status_code == 200
    again = world.token()
    assert again.status_code == 200, again.json
    assert again.json["access_token"] == warm.json["access_token"]
    assert client.get("/api/v1/connections", headers=auth).status_code == 200


def test_authentication_during_the_cut_is_503_not_401(
    proxied_world: World, proxy: TcpProxy
) -> None:
    world = proxied_world
    other_id, other_secret = world.add_client(["https://www.googleapis.com/auth/gmail.readonly"])
    proxy.cut()
    try:
        # An uncached client must be read from the database: unknown is not the same as down.
        world.client_id, world.client_secret = other_id, other_secret
        _assert_unavailable(world.token())
    finally:
        proxy.restore()
    assert world.token().status_code == 200


def test_pages_answer_a_readable_503_during_the_cut(
    proxied_world: World, proxy: TcpProxy
) -> None:
    client = signed_in(proxied_world.app, proxied_world.user)
    assert client.get("/connections").status_code == 200
    proxy.cut()
    try:
        page = client.get("/connections")
    finally:
        proxy.restore()
    text = page.get_data(as_text=True)
    assert page.status_code == 503 and page.mimetype == "text/html", (page.status_code, text)
    assert page.headers["Retry-After"] == "1"
    assert "cannot reach its database" in text and "Traceback" not in text
    assert client.get("/connections").status_code == 200
