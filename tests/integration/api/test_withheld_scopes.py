"""POST /api/v1/token never hands out a scope the user withholds, on either path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import event, select, update

from broker import webhooks
from broker.clock import utcnow
from broker.db import get_db
from broker.keys import get_keys
from broker.models import AccessToken, AuditEvent, Connection, WebhookDelivery
from broker.tokens import refresh_due
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import MODIFY, READONLY, SEND, World


def withhold(world: World, *scopes: str) -> None:
    """Record scopes as withheld, as the connection page does."""
    with get_db(world.app).transaction() as session:
        session.execute(update(Connection).values(withheld_scopes=sorted(scopes)))


def minted(emulator: EmulatorControls, access_token: str) -> set[str]:
    """Return the scopes Google itself says an access token carries."""
    info = emulator.http.get("/tokeninfo", params={"access_token": access_token})
    assert info.status_code == 200, info.text
    return set(info.json()["scope"].split())


def test_a_withheld_scope_is_refused_with_a_consent_url(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    assert world.token({"user": world.user.email, "scopes": [SEND]}).status_code == 200
    withhold(world, SEND)
    # A stored send token exists, and the fast path still refuses it.
    response = world.token({"user": world.user.email, "scopes": [SEND]})
    assert response.status_code == 409, response.json
    assert response.json["error"] == "scope_not_granted"
    assert response.json["error_description"] == f"withheld by the user: {SEND}"
    assert response.json["consent_url"].startswith("http://127.0.0.1:8080/connections/connect?")
    with get_db(world.app).transaction(write=False) as session:
        refusal = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "token.handout", AuditEvent.outcome == "denied")).one()
    assert refusal.reason == "scope_not_granted" and refusal.scopes == [SEND]
    mixed = world.token({"user": world.user.email, "scopes": [SEND, MODIFY]})
    assert mixed.status_code == 403  # not allowed for the client comes first


def test_the_default_scope_set_leaves_withheld_scopes_out(
    make_world: Callable[..., World], emulator: EmulatorControls
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    withhold(world, SEND)
    response = world.token()
    assert response.status_code == 200, response.json
    assert SEND not in response.json["scopes"] and READONLY in response.json["scopes"]
    assert minted(emulator, response.json["access_token"]) == {READONLY}


def test_everything_withheld_leaves_nothing_to_hand_out(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY], allowed=[READONLY])
    withhold(world, READONLY)
    response = world.token()
    assert response.status_code == 409 and response.json["error"] == "scope_not_granted"


def test_the_fast_path_reads_withheld_scopes_in_its_one_query(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    withhold(world, SEND)
    assert world.token({"user": world.user.email, "scopes": [READONLY]}).status_code == 200
    engine = get_db(world.app).engine
    selects: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().lower().startswith("select"):
            selects.append(statement.lower())

    event.listen(engine, "before_cursor_execute", seen)
    try:
        served = world.token({"user": world.user.email, "scopes": [READONLY]})
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert served.status_code == 200
    # On PostgreSQL the fast path runs on the bare driver, which SQLAlchemy does not see.
    if engine.dialect.name == "sqlite":
        [read] = [s for s in selects if "connections" in s]
        assert "withheld_scopes" in read


def test_keep_alive_never_mints_a_withheld_scope(
    make_world: Callable[..., World], emulator: EmulatorControls
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    withhold(world, SEND)
    old = utcnow() - dt.timedelta(days=30)
    with get_db(world.app).transaction() as session:
        session.execute(update(Connection).values(created_at=old, last_refresh_at=old))
    assert refresh_due(world.app) == 1
    with get_db(world.app).transaction(write=False) as session:
        stored = session.scalars(select(AccessToken)).all()
    assert [row.scopes for row in stored] == [[READONLY]]


def test_the_connection_list_shows_only_what_jobs_may_use(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    withhold(world, SEND)
    listed = world.app.test_client().get(
        "/api/v1/connections", headers={"Authorization": world.auth},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert listed.status_code == 200, listed.json
    [connection] = listed.json["connections"]
    assert READONLY in connection["granted_scopes"] and SEND not in connection["granted_scopes"]


def test_a_dead_grant_asks_back_only_what_jobs_may_use(
    make_world: Callable[..., World], emulator: EmulatorControls
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    with get_db(world.app).transaction() as session:
        webhooks.add(session, get_keys(world.app), world.tenant.id,
                     url="https://hooks.example.test/broker",
                     events=["connection.needs_reauth"], allow_private=False, actor="test")
    withhold(world, SEND)
    emulator.revoke_account(world.user.email)
    refused = world.token()
    assert refused.json["error"] == "reauth_required", refused.json
    assert "gmail.send" not in refused.json["reauth_url"]
    with get_db(world.app).transaction(write=False) as session:
        [delivery] = session.scalars(select(WebhookDelivery)).all()
    assert "gmail.readonly" in delivery.payload["reauth_url"]
    assert "gmail.send" not in delivery.payload["reauth_url"]
