"""POST /api/v1/token: each check of DESIGN §7's decision order, its refusal and its audit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, AuditEvent, Connection, Policy, User
from broker.tenancy.client_auth import get_cache
from tests.conftest import Clock
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import (
    MODIFY,
    PUBLIC_URL,
    READONLY,
    SEND,
    World,
    basic,
    broker_config,
)


def audits(world: World, **where: Any) -> list[AuditEvent]:
    """Return the tenant's audit events of token hand-outs."""
    with get_db(world.app).transaction(write=False) as session:
        query = select(AuditEvent).where(
            AuditEvent.tenant_id == world.tenant.id, AuditEvent.action == "token.handout"
        )
        for name, value in where.items():
            query = query.where(getattr(AuditEvent, name) == value)
        return list(session.scalars(query.order_by(AuditEvent.seq)))


def set_policy(world: World, **values: Any) -> None:
    """Change the tenant's policy."""
    with get_db(world.app).transaction() as session:
        session.execute(update(Policy).where(Policy.tenant_id == world.tenant.id).values(**values))


def test_hand_out_answers_full_scopes_and_no_store(world: World) -> None:
    response = world.token({"user": world.user.email, "scopes": ["gmail.readonly"]})
    assert response.status_code == 200, response.json
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert set(body) == {"access_token", "token_type", "expires_at", "expires_in", "scopes",
                         "user"}
    assert body["scopes"] == [READONLY] or set(body["scopes"]) - {READONLY} <= {"openid"}
    assert body["user"] == {"id": str(world.user.id), "email": world.user.email}
    assert body["expires_at"].endswith("Z") and 3000 < body["expires_in"] <= 3600
    assert [e.outcome for e in audits(world)] == ["ok"]


def test_user_by_id_and_default_scopes_are_allowed_and_granted(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY], allowed=[READONLY, SEND])
    response = world.token({"user": str(world.user.id)})
    assert response.status_code == 200, response.json
    assert READONLY in response.json["scopes"] and SEND not in response.json["scopes"]


@pytest.mark.parametrize("header", [None, "Basic !!!", "Bearer x", "wrong", "unknown"])
def test_bad_credentials_are_401_with_challenge_and_not_audited(
    world: World, header: str | None
) -> None:
    headers = {}
    if header == "wrong":
        headers["Authorization"] = basic(world.client_id, "not-the-secret")
    elif header == "unknown":
        headers["Authorization"] = basic("cl_nosuchclient", world.client_secret)
    elif header:
        headers["Authorization"] = header
    response = world.app.test_client().post(
        "/api/v1/token", json={"user": world.user.email}, headers=headers
    )
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert audits(world) == []


def test_failed_authentications_are_limited_per_source_ip(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> None:
    app = make_app(**broker_config(emulator, AUTH_FAILURE_LIMIT="3/minute"))
    world = make_world(app=app)
    bad = {"Authorization": basic(world.client_id, "wrong")}
    client = app.test_client()
    codes = [
        client.post("/api/v1/token", json={}, headers=bad,
                    environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    assert world.token(ip="198.51.100.2").status_code == 200  # another address is not limited


def test_failures_from_a_shared_address_do_not_lock_out_good_clients(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> None:
    app = make_app(**broker_config(emulator, AUTH_FAILURE_LIMIT="2/minute"))
    world = make_world(app=app)
    shared = {"REMOTE_ADDR": "198.51.100.1"}
    client = app.test_client()

    def post(authorization: str | None) -> Any:
        headers = {"Authorization": authorization} if authorization else {}
        return client.post("/api/v1/token", json={"user": world.user.email}, headers=headers,
                           environ_base=shared)

    wrong, unknown = basic(world.client_id, "wrong"), basic("no-such-client", "wrong")
    assert [post(h).status_code for h in (wrong, unknown, None, "Basic !!")] == \
        [401, 401, 429, 429]
    assert post(world.auth).status_code == 200
    listed = client.get("/api/v1/connections", headers={"Authorization": world.auth},
                        environ_base=shared)
    assert listed.status_code == 200
    for refused in (post(wrong), post(unknown), client.get(
            "/api/v1/connections", headers={"Authorization": wrong}, environ_base=shared)):
        assert refused.status_code == 429 and refused.json["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
    assert post(world.auth).status_code == 200


def test_ip_outside_client_or_tenant_ranges_is_refused_and_audited(
    make_world: Callable[..., World],
) -> None:
    world = make_world(ip_ranges=("10.0.0.0/8", "2001:db8::/32"))
    assert world.token(ip="203.0.113.9").json["error"] == "ip_not_allowed"
    assert world.token(ip="10.1.2.3").status_code == 200
    assert world.token(ip="::ffff:10.1.2.3").status_code == 200  # IPv4-mapped peer
    assert world.token(ip="2001:db8::5").status_code == 200
    set_policy(world, token_ip_ranges=["10.9.0.0/16"])
    get_cache(world.app).clear()
    response = world.token(ip="10.1.2.3")
    assert response.status_code == 403 and response.json["error"] == "ip_not_allowed"
    assert len(audits(world, reason="ip_not_allowed")) == 2


def test_rate_limit_per_client_answers_429_with_retry_after(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> None:
    app = make_app(**broker_config(emulator, API_RATE_LIMIT="2/minute"))
    world = make_world(app=app)
    codes = [world.token().status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = world.token()
    assert limited.json["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert not audits(world, reason="rate_limited")


@pytest.mark.parametrize(
    "body",
    [
        {"user": "x", "extra": 1},
        {"user": ""},
        {"user": "x", "min_ttl": 3001},
        {"user": "x", "min_ttl": True},
        {"user": "x", "scopes": "gmail.readonly"},
        {"user": "x", "scopes": ["gmail.nonsense"]},
        {"user": "x", "rejected_token": "a" * 2049},
        [],
    ],
)
def test_malformed_bodies_are_400_and_audited(world: World, body: Any) -> None:
    response = world.token(body)
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert len(audits(world, reason="invalid_request")) == 1


def test_duplicate_keys_and_non_json_are_refused(world: World) -> None:
    client = world.app.test_client()
    duplicate = client.post(
        "/api/v1/token", data='{"user": "a", "user": "b"}', content_type="application/json",
        headers={"Authorization": world.auth},
    )
    assert duplicate.status_code == 400
    form = client.post("/api/v1/token", data={"user": "a"}, headers={"Authorization": world.auth})
    assert form.status_code == 415 and form.json["error"] == "unsupported_media_type"


def test_scope_outside_client_allowlist_is_403(world: World) -> None:
    response = world.token({"user": world.user.email, "scopes": ["gmail.send"]})
    assert response.status_code == 403 and response.json["error"] == "scope_not_allowed"


def test_unknown_user_and_other_tenants_user_are_404(
    world: World, make_world: Callable[..., World]
) -> None:
    other = make_world()
    for who in ("nobody@example.test", other.user.email, str(other.user.id)):
        response = world.token({"user": who})
        assert response.status_code == 404 and response.json["error"] == "unknown_user"


def test_suspended_user_is_refused_at_once(world: World) -> None:
    assert world.token().status_code == 200
    with get_db(world.app).transaction() as session:
        session.execute(update(User).where(User.id == world.user.id).values(status="suspended"))
    response = world.token()
    assert response.status_code == 403 and response.json["error"] == "user_suspended"


def test_login_max_age_uses_the_injected_clock(world: World, clock: Clock) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock
    set_policy(world, handout_login_max_age=3600)
    assert world.token().status_code == 200
    clock.advance(minutes=61)
    response = world.token()
    assert response.status_code == 403 and response.json["error"] == "login_required"
    assert response.json["login_url"] == PUBLIC_URL + "/auth/login"


def test_last_use_is_recorded_at_most_once_a_minute_and_every_hand_out_audited(
    world: World, clock: Clock,
) -> None:
    clock.now = utcnow()
    world.app.extensions["broker.clock"] = clock

    def last_used() -> dt.datetime | None:
        with get_db(world.app).transaction(write=False) as session:
            return session.scalars(select(Connection.last_used_at)).one()

    audited = _audit_count(world, "token.handout")
    first = world.token()  # refreshed; the next ones are served from the store
    assert first.status_code == 200 and last_used() == clock.now
    touched = clock.now
    clock.advance(seconds=30)
    assert world.token().status_code == 200 and last_used() == touched
    clock.advance(seconds=31)
    assert world.token().status_code == 200 and last_used() == clock.now
    assert _audit_count(world, "token.handout") == audited + 3


def test_not_connected_and_revoked_are_404_with_connect_url(
    make_world: Callable[..., World], world: World
) -> None:
    bare = make_world(connected=False)
    response = bare.token()
    assert response.status_code == 404 and response.json["error"] == "not_connected"
    assert response.json["connect_url"].startswith(PUBLIC_URL + "/connections/connect?scope=")
    with get_db(world.app).transaction() as session:
        session.execute(update(Connection).values(status="revoked"))
    assert world.token().json["error"] == "not_connected"


def test_needs_reauth_is_409_with_reason_and_url(world: World) -> None:
    with get_db(world.app).transaction() as session:
        session.execute(
            update(Connection).where(Connection.user_id == world.user.id)
            .values(status="needs_reauth", status_reason="reauth_policy")
        )
    response = world.token()
    assert response.status_code == 409
    assert response.json["error"] == "reauth_required"
    assert response.json["reason"] == "reauth_policy"
    assert "reauth_url" in response.json
    assert audits(world, reason="reauth_required")[0].details == {"reason": "reauth_policy"}


def test_scope_not_granted_is_409_with_consent_url(make_world: Callable[..., World]) -> None:
    world = make_world(granted=[READONLY], allowed=[READONLY, MODIFY])
    response = world.token({"user": world.user.email, "scopes": [MODIFY]})
    assert response.status_code == 409 and response.json["error"] == "scope_not_granted"
    assert "gmail.modify" in response.json["consent_url"]


def test_unreadable_stored_token_marks_needs_reauth(world: World) -> None:
    assert world.token().status_code == 200
    with get_db(world.app).transaction() as session:
        row = session.scalars(select(AccessToken)).one()
        row.token = row.token[:-1] + bytes([row.token[-1] ^ 1])
    response = world.token()
    assert response.status_code == 409 and response.json["reason"] == "token_unreadable"
    with get_db(world.app).transaction(write=False) as session:
        assert session.scalars(select(Connection.status)).one() == "needs_reauth"


def _audit_count(world: World, action: str | None = None) -> int:
    query = select(func.count()).select_from(AuditEvent)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    with get_db(world.app).transaction(write=False) as session:
        return session.scalar(query) or 0


@pytest.mark.parametrize("stored", [False, True], ids=["refreshed", "fast_path"])
def test_audit_failure_gates_the_hand_out(world: World, stored: bool) -> None:
    if stored:
        assert world.token().status_code == 200  # a fresh stored token: the fast path next
    db = get_db(world.app)
    # A trigger makes the database itself refuse audit rows, whichever driver path inserts them.
    if db.is_sqlite:
        create = ["CREATE TRIGGER audit_down BEFORE INSERT ON audit_events"
                  " BEGIN SELECT RAISE(ABORT, 'audit table unavailable'); END"]
        drop = ["DROP TRIGGER audit_down"]
    else:
        create = ["CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS"
                  " $$ BEGIN RAISE EXCEPTION 'audit table unavailable'; END $$",
                  "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events"
                  " FOR EACH ROW EXECUTE FUNCTION audit_down()"]
        drop = ["DROP TRIGGER audit_down ON audit_events", "DROP FUNCTION audit_down()"]
    before = _audit_count(world)
    db.run(lambda conn: [conn.exec_driver_sql(sql) for sql in create])
    try:
        response = world.token()
    finally:
        db.run(lambda conn: [conn.exec_driver_sql(sql) for sql in drop])
    assert _audit_count(world) == before
    assert response.status_code == 500
    assert "access_token" not in response.json and response.json["error"] == "server_error"


def test_rotated_secret_keeps_working_through_grace_then_disabled_client_fails(
    world: World,
) -> None:
    from broker.tenancy import clients

    with get_db(world.app).transaction() as session:
        issued = clients.rotate_secret(
            session, world.client_id, grace=dt.timedelta(hours=1), now=utcnow()
        )
    get_cache(world.app).clear()
    assert world.token().status_code == 200  # old secret, in grace
    old = world.client_secret
    world.client_secret = issued.client_secret
    assert world.token().status_code == 200
    with get_db(world.app).transaction() as session:
        clients.rotate_secret(session, world.client_id, grace=dt.timedelta(0), now=utcnow())
        clients.disable_client(session, world.client_id)
    get_cache(world.app).clear()
    assert world.token().status_code == 401
    world.client_secret = old
    assert world.token().status_code == 401


def test_unknown_api_paths_and_methods_answer_json(world: World) -> None:
    client = world.app.test_client()
    missing = client.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.get("/api/v1/token")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    big = client.post("/api/v1/token", data="x" * 70_000, content_type="application/json",
                      headers={"Authorization": world.auth})
    assert big.status_code in (400, 413) and big.is_json


def test_every_refusal_but_401_and_429_is_audited(world: World) -> None:
    world.token({"user": "nobody@x.test"})
    world.token({"user": world.user.email, "scopes": ["gmail.send"]})
    with get_db(world.app).transaction(write=False) as session:
        count = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == "denied")
        )
    assert count == 2
