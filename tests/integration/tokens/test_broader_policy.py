"""Broader tokens end with the policy that allowed them (issue 11 item 3).

Google may answer a refresh with more scope than asked; such a token is stored and handed out
only while the tenant's `allow_broader_tokens` is on. Once it is off, the stored row is as if
absent on the fast path, the worker renews from the scope key (never from the row's answered
scopes), and the policy service deletes such rows in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import httpx
from sqlalchemy import select, update

from broker import worker
from broker.clock import utcnow
from broker.db import get_db
from broker.models import AccessToken, Policy
from broker.scopes import gmail_only
from broker.tenancy import policy
from tests.plugins.world import READONLY, SEND, World

BROAD = {"access_token": "ya29.broader", "expires_in": 3599, "token_type": "Bearer",
         "scope": f"{READONLY} {SEND}"}


def _allow_broader(world: World, on: bool) -> None:
    with get_db(world.app).transaction() as session:
        session.execute(update(Policy).where(Policy.tenant_id == world.tenant.id)
                        .values(allow_broader_tokens=on))


def _stored(world: World) -> dict[str, list[str]]:
    with get_db(world.app).transaction(write=False) as session:
        return {row.scope_key: list(row.scopes) for row in session.scalars(select(AccessToken))}


def _broad_token_stored(world: World) -> None:
    """Have Google answer broadly while the tenant allows it: the row carries gmail.send."""
    _allow_broader(world, True)
    world.emulator.fault("token", status=200, body=BROAD)
    first = world.token()
    assert first.status_code == 200, first.json
    assert SEND in first.json["scopes"] and first.json["access_token"] == "ya29.broader"
    assert [SEND in scopes for scopes in _stored(world).values()] == [True]


def _carried(world: World, token: str) -> list[str]:
    answer = httpx.get(world.emulator.url + "/tokeninfo", params={"access_token": token})
    assert answer.status_code == 200, answer.text
    return gmail_only(answer.json()["scope"].split())


def test_fast_path_treats_a_broader_row_as_absent_once_the_policy_is_off(world: World) -> None:
    _broad_token_stored(world)
    _allow_broader(world, False)
    again = world.token()
    assert again.status_code == 200, again.json
    assert again.json["access_token"] != "ya29.broader"
    assert gmail_only(again.json["scopes"]) == [READONLY]
    assert _carried(world, again.json["access_token"]) == [READONLY]
    assert [gmail_only(s) for s in _stored(world).values()] == [[READONLY]]


def test_a_broader_row_still_serves_while_the_policy_allows_it(world: World) -> None:
    _broad_token_stored(world)
    again = world.token()
    assert again.status_code == 200 and again.json["access_token"] == "ya29.broader"


def test_turning_the_flag_off_deletes_broader_rows_in_the_same_transaction(
    world: World,
) -> None:
    _broad_token_stored(world)
    # A second, narrow row of the same connection (another client, another scope key) stays.
    world.client_id, world.client_secret = world.add_client([READONLY, SEND])
    assert world.token().status_code == 200
    assert len(_stored(world)) == 2
    with get_db(world.app).transaction() as session:
        changes = policy.update_policy(
            session, world.tenant.id, policy.PolicyValues({"allow_broader_tokens": False}),
            admin_ip=ipaddress.ip_address("203.0.113.7"), confirmed=False, actor="test",
        )
        assert changes == {"allow_broader_tokens": {"before": True, "after": False}}
        # Not yet committed: the rows go with the policy change or not at all.
        left = session.scalars(select(AccessToken.scope_key)).all()
        assert left == [" ".join(sorted([READONLY, SEND]))]
    stored = _stored(world)
    assert list(stored) == [" ".join(sorted([READONLY, SEND]))]


def test_worker_renews_from_the_scope_key_not_the_answered_scopes(world: World) -> None:
    _broad_token_stored(world)
    _allow_broader(world, False)
    with get_db(world.app).transaction() as session:
        session.execute(update(AccessToken).values(
            expires_at=utcnow() + dt.timedelta(minutes=5)))
    assert worker.refresh_due(world.app) == 1
    rows = _stored(world)
    assert [gmail_only(s) for s in rows.values()] == [[READONLY]]
    served = world.token().json
    assert _carried(world, served["access_token"]) == [READONLY]
