"""A stored access token opens only for its own connection and scope key (issue 11 item 11).

The seal binds an access token to its row id, connection and scope key (format 2). A row
moved to another connection of the same tenant, or to another scope key, does not open; a row
sealed before that binding is a stale cache: refreshed, never opened, never `needs_reauth`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, select, update

from broker.db import get_db
from broker.keys import get_keys, reseal_tenant
from broker.keys.sealed import BOUND_FORMAT
from broker.models import AccessToken, Connection
from broker.tenancy import key_rotation
from tests.plugins.world import READONLY, SEND, World


def _row(world: World) -> AccessToken:
    assert world.connection is not None
    with get_db(world.app).transaction(write=False) as session:
        row = session.scalars(
            select(AccessToken).where(AccessToken.connection_id == world.connection.id)
        ).one()
        session.expunge(row)
        return row


def _status(world: World) -> str:
    assert world.connection is not None
    with get_db(world.app).transaction(write=False) as session:
        return str(session.scalar(
            select(Connection.status).where(Connection.id == world.connection.id)
        ))


def _refreshes(world: World) -> int:
    return int(world.emulator.calls()["token"]["refresh_token"])


def test_a_row_moved_to_another_connection_of_the_tenant_does_not_open(
    world: World, make_world: Callable[..., World],
) -> None:
    victim = world.token().json["access_token"]
    row = _row(world)
    assert row.token[0] == BOUND_FORMAT
    # A second user of the same tenant, whose own stored token is replaced by the victim's.
    other = make_world(app=world.app)
    other.tenant, other.client_id, other.client_secret = (
        world.tenant, world.client_id, world.client_secret,
    )
    assert other.connection is not None
    with get_db(world.app).transaction() as session:
        session.execute(update(Connection).where(Connection.id == other.connection.id)
                        .values(tenant_id=world.tenant.id))
        session.execute(update(type(other.user)).where(type(other.user).id == other.user.id)
                        .values(tenant_id=world.tenant.id))
        session.execute(delete(AccessToken).where(
            AccessToken.connection_id == other.connection.id))
        session.execute(update(AccessToken).where(AccessToken.id == row.id)
                        .values(connection_id=other.connection.id))
    answer = other.token()
    assert answer.status_code == 409, answer.json
    assert answer.json["reason"] == "token_unreadable"
    assert victim not in answer.get_data(as_text=True)


def test_a_row_moved_to_another_scope_key_does_not_open(
    make_world: Callable[..., World],
) -> None:
    world = make_world(granted=[READONLY, SEND], allowed=[READONLY, SEND])
    narrow = world.token({"user": world.user.email, "scopes": [READONLY]}).json["access_token"]
    row = _row(world)
    wide_key = " ".join(sorted([READONLY, SEND]))
    with get_db(world.app).transaction() as session:
        session.execute(update(AccessToken).where(AccessToken.id == row.id)
                        .values(scope_key=wide_key, scopes=sorted([READONLY, SEND])))
    answer = world.token({"user": world.user.email, "scopes": [READONLY, SEND]})
    assert answer.status_code == 409 and answer.json["reason"] == "token_unreadable"
    assert narrow not in answer.get_data(as_text=True)


def test_a_row_sealed_before_the_binding_is_refreshed_not_unreadable(world: World) -> None:
    first = world.token().json["access_token"]
    row = _row(world)
    with get_db(world.app).transaction() as session:
        # Sealed the old way (row id only), as a broker before this change wrote it.
        old = get_keys(world.app).seal(session, world.tenant.id, row.id, "access_token",
                                       first.encode())
        assert old[0] != BOUND_FORMAT
        session.execute(update(AccessToken).where(AccessToken.id == row.id).values(token=old))
    calls = _refreshes(world)
    again = world.token()
    assert again.status_code == 200, again.json
    assert again.json["access_token"] != first and _refreshes(world) == calls + 1
    assert _status(world) == "active" and _row(world).token[0] == BOUND_FORMAT


def test_reseal_keeps_the_binding(world: World) -> None:
    first = world.token().json["access_token"]
    keys = get_keys(world.app)
    with get_db(world.app).transaction() as session:
        key_rotation.rotate(session, keys, world.tenant.id, actor="test")
    report = reseal_tenant(keys, get_db(world.app), world.tenant.id)
    assert report.resealed >= 2 and report.unreadable == 0
    calls = _refreshes(world)
    again = world.token()
    assert again.status_code == 200 and again.json["access_token"] == first
    assert _refreshes(world) == calls
