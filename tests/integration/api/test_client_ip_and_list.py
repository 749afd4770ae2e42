"""Client IP per DESIGN §7 (forged headers never count) and GET /api/v1/connections."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import update

from broker.db import get_db
from broker.models import Connection, Policy
from broker.tenancy import client_auth
from tests.factories import make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, SEND, World, broker_config, connect


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "10.1.1.1"},
        {"Forwarded": "for=10.1.1.1"},
        {"X-Real-IP": "10.1.1.1"},
        {"X-Forwarded-For": "10.1.1.1, 10.2.2.2"},
    ],
)
def test_forged_headers_from_an_untrusted_peer_change_nothing(
    make_world: Callable[..., World], header: dict[str, str]
) -> None:
    world = make_world(ip_ranges=("10.0.0.0/8",))
    response = world.token(ip="203.0.113.7", headers=header)
    assert response.status_code == 403 and response.json["error"] == "ip_not_allowed"


@pytest.fixture
def proxied(make_app: Callable[..., Flask], emulator: EmulatorControls,
            make_world: Callable[..., World]) -> World:
    """A world behind a trusted proxy at 192.0.2.10, its client allowed 10.0.0.0/8 only."""
    app = make_app(**broker_config(emulator, TRUSTED_PROXIES="192.0.2.10/32,2001:db8:ffff::/48"))
    return make_world(app=app, ip_ranges=("10.0.0.0/8",))


def test_real_client_behind_a_trusted_proxy_is_found(proxied: World) -> None:
    ok = proxied.token(ip="192.0.2.10", headers={"X-Forwarded-For": "203.0.113.1, 10.3.3.3"})
    assert ok.status_code == 200
    forged_left = proxied.token(
        ip="192.0.2.10", headers={"X-Forwarded-For": "10.3.3.3, 203.0.113.1"}
    )
    assert forged_left.status_code == 403
    ignored = proxied.token(ip="192.0.2.10", headers={"X-Real-IP": "10.3.3.3",
                                                       "Forwarded": "for=10.3.3.3"})
    assert ignored.status_code == 403  # the proxy itself is not in the client's range
    via_v6 = proxied.token(ip="2001:db8:ffff::1", headers={"X-Forwarded-For": "10.4.4.4"})
    assert via_v6.status_code == 200
    mapped = proxied.token(ip="::ffff:192.0.2.10", headers={"X-Forwarded-For": "10.5.5.5"})
    assert mapped.status_code == 200


@pytest.fixture
def inside(make_app: Callable[..., Flask], emulator: EmulatorControls,
           make_world: Callable[..., World]) -> World:
    """A world behind a trusted proxy at 10.0.0.1, which lies inside the client's 10.0.0.0/8."""
    app = make_app(**broker_config(emulator, TRUSTED_PROXIES="10.0.0.1/32"))
    return make_world(app=app, ip_ranges=("10.0.0.0/8",))


@pytest.mark.parametrize("hop", ["unknown", "_hidden", "10.3.3.3:port", "[10.3.3.3]", "%"])
def test_an_unparsable_hop_from_a_trusted_proxy_is_refused(inside: World, hop: str) -> None:
    refused = inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": hop})
    assert refused.status_code == 403 and refused.json["error"] == "ip_not_allowed"


def test_ported_hops_from_a_trusted_proxy_are_the_client(inside: World) -> None:
    assert inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": "10.3.3.3:5123"}) \
        .status_code == 200
    outside = inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": "203.0.113.1:5123"})
    assert outside.status_code == 403
    v6 = inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": "[2001:db8::1]:5123"})
    assert v6.status_code == 403


def test_tenant_token_ranges_refuse_an_unknown_hop(inside: World) -> None:
    with get_db(inside.app).transaction() as session:
        policy = session.get(Policy, inside.tenant.id)
        assert policy is not None
        policy.token_ip_ranges = ["10.0.0.0/8"]
    inside.client_id, inside.client_secret = inside.add_client([READONLY])  # no ranges of its own
    client_auth.get_cache(inside.app).clear()
    assert inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": "10.3.3.3"}).status_code \
        == 200
    refused = inside.token(ip="10.0.0.1", headers={"X-Forwarded-For": "unknown"})
    assert refused.status_code == 403 and refused.json["error"] == "ip_not_allowed"


def test_connections_are_listed_with_cursor_pagination(
    make_world: Callable[..., World], emulator: EmulatorControls
) -> None:
    world = make_world(allowed=[READONLY])
    for _ in range(4):
        user = make_user(world.app, world.tenant)
        connect(world.app, emulator, user, [READONLY, SEND])
    with get_db(world.app).transaction() as session:
        session.execute(update(Connection).where(Connection.user_id == world.user.id)
                        .values(status="needs_reauth", status_reason="reauth_policy"))
    client = world.app.test_client()
    seen, cursor = [], None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/connections", query_string=query,
                          headers={"Authorization": world.auth})
        assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
        seen += page.json["connections"]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len({c["id"] for c in seen}) == 5
    first = seen[0]
    assert set(first) == {"id", "user", "status", "status_reason", "granted_scopes",
                          "last_refresh_at", "last_used_at"}
    assert "token" not in str(seen).lower().replace("refresh_at", "")
    reauth = client.get("/api/v1/connections?status=needs_reauth",
                        headers={"Authorization": world.auth}).json["connections"]
    assert [c["user"]["email"] for c in reauth] == [world.user.email]
    for bad in ("limit=0", "limit=501", "status=nope", "cursor=!!", "limit=1&limit=2", "x=1"):
        refused = client.get("/api/v1/connections?" + bad, headers={"Authorization": world.auth})
        assert refused.status_code == 400 and refused.json["error"] == "invalid_request", bad


def test_connections_of_other_tenants_are_invisible(make_world: Callable[..., World]) -> None:
    mine, theirs = make_world(), make_world()
    listed = mine.app.test_client().get(
        "/api/v1/connections", headers={"Authorization": mine.auth}
    ).json["connections"]
    assert [c["user"]["email"] for c in listed] == [mine.user.email]
    assert theirs.user.email not in str(listed)
