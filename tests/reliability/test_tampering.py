"""Tampered ciphertexts never open: swaps across rows, fields and tenants, cuts and flipped bytes.

Every sealed value of three tenants is tried in every other value's place, cut at every length
and flipped at every offset, through the KeyService; then a sample goes through the API, where
each must be a clean, audited 409 `token_unreadable` that sends nothing to Google.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from sqlalchemy import delete, func, select, update

from broker.db import get_db
from broker.keys import access_token_bound, is_unbound
from broker.keys.extension import get_keys
from broker.keys.sealed import HEADER, NONCE_BYTES, SealError
from broker.models import AccessToken, AuditEvent, Connection, DataKey
from tests.plugins.world import World


@dataclass(frozen=True)
class Sealed:
    """One sealed value and the slot (tenant, row, field) it belongs to."""

    tenant_id: uuid.UUID
    row_id: uuid.UUID
    field: str
    blob: bytes
    plain: bytes
    # An access token is bound to its connection and scope key as well (issue 11 item 11).
    bound: tuple[str, ...] = ()


def _sealed_values(app: Flask) -> list[Sealed]:
    keys = get_keys(app)
    found = []
    with get_db(app).transaction(write=False) as session:
        for conn in session.scalars(select(Connection)):
            assert conn.refresh_token is not None
            found.append(Sealed(conn.tenant_id, conn.id, "refresh_token", conn.refresh_token, b""))
        for tok, tenant_id in session.execute(
            select(AccessToken, Connection.tenant_id)
            .join(Connection, Connection.id == AccessToken.connection_id)
        ):
            found.append(Sealed(tenant_id, tok.id, "access_token", tok.token, b"",
                                access_token_bound(tok.connection_id, tok.scope_key)))
        return [
            Sealed(s.tenant_id, s.row_id, s.field, s.blob,
                   keys.open(session, s.tenant_id, s.row_id, s.field, s.blob, bound=s.bound),
                   s.bound)
            for s in found
        ]


def _variants(blob: bytes, stride: int = 1) -> list[tuple[str, bytes]]:
    """Truncations and single-byte flips: every offset of header and nonce, every `stride`th
    offset of the ciphertext and tag (the last byte always)."""
    head = HEADER.size + NONCE_BYTES
    offsets = sorted({*range(head), *range(head, len(blob), stride), len(blob) - 1})
    cuts = [(f"cut@{n}", blob[:n]) for n in offsets]
    flips = [(f"flip@{i}", blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]) for i in offsets]
    return cuts + flips + [("extended", blob + b"\x00")]


@pytest.fixture
def worlds(make_world: Callable[..., World]) -> list[World]:
    """Three tenants, two connected users each, each with a stored access token."""
    made = []
    for _ in range(3):
        world = make_world()
        for _ in range(2):
            assert world.token().status_code == 200
        made.append(world)
        second = make_world(app=world.app)  # a second tenant user pair shares nothing
        assert second.token().status_code == 200
    return made


def test_nothing_opens_in_another_place_cut_or_flipped(worlds: list[World]) -> None:
    app = worlds[0].app
    keys = get_keys(app)
    values = _sealed_values(app)
    assert len({v.tenant_id for v in values}) >= 3 and len(values) >= 12
    tried = 0
    with get_db(app).transaction(write=False) as session:
        for source, target in itertools.permutations(values, 2):
            with pytest.raises(SealError) as refused:
                keys.open(session, target.tenant_id, target.row_id, target.field, source.blob,
                          bound=target.bound)
            _no_echo(str(refused.value), source)
            tried += 1
        for value in values:
            for label, tampered in _variants(value.blob):
                with pytest.raises(SealError) as refused:
                    keys.open(session, value.tenant_id, value.row_id, value.field, tampered,
                              bound=value.bound)
                _no_echo(f"{label} {refused.value}", value)
                tried += 1
            # Right blob, right row, wrong field or tenant label.
            for field in ("refresh_token", "access_token", "code_verifier", "webhook_secret"):
                if field != value.field:
                    with pytest.raises(SealError):
                        keys.open(session, value.tenant_id, value.row_id, field, value.blob,
                                  bound=value.bound)
            # Right blob and row id, but the row moved to another connection or scope key.
            for other in values:
                if value.bound and other.bound and other.bound != value.bound:
                    with pytest.raises(SealError):
                        keys.open(session, value.tenant_id, value.row_id, value.field,
                                  value.blob, bound=other.bound)
                    tried += 1
    assert tried > 2000


def _no_echo(message: str, value: Sealed) -> None:
    assert value.plain.decode() not in message
    assert value.blob.hex() not in message and str(value.blob) not in message


def _denials(app: Flask) -> int:
    with get_db(app).transaction(write=False) as session:
        return int(session.scalar(
            select(func.count()).select_from(AuditEvent)
            .where(AuditEvent.action == "token.handout", AuditEvent.reason == "reauth_required")
        ) or 0)


def _reset(app: Flask, conn_id: uuid.UUID, refresh: bytes, token: AccessToken | None) -> None:
    with get_db(app).transaction() as session:
        session.execute(delete(AccessToken).where(AccessToken.connection_id == conn_id))
        session.execute(
            update(Connection).where(Connection.id == conn_id)
            .values(status="active", status_reason=None, refresh_token=refresh,
                    refresh_lease_until=None, refresh_lease_owner=None)
        )
        if token is not None:
            session.add(AccessToken(
                connection_id=conn_id, scope_key=token.scope_key, id=token.id, token=token.token,
                scopes=token.scopes, expires_at=token.expires_at, obtained_at=token.obtained_at,
            ))


def _refused_cleanly(world: World, secret: bytes) -> None:
    before = _denials(world.app)
    answer = world.token()
    body = answer.get_data(as_text=True)
    assert answer.status_code == 409, body
    assert answer.json["error"] == "reauth_required"
    assert answer.json["reason"] == "token_unreadable"
    assert secret.decode() not in body
    assert _denials(world.app) == before + 1
    with get_db(world.app).transaction(write=False) as session:
        conn = session.get(Connection, world.connection.id)  # type: ignore[union-attr]
        assert conn is not None and conn.status == "needs_reauth"
        assert conn.status_reason == "token_unreadable"


def test_tampered_values_are_clean_audited_refusals_through_the_api(
    worlds: list[World]
) -> None:
    world, other = worlds[0], worlds[1]
    app = world.app
    assert world.connection is not None and other.connection is not None
    values = _sealed_values(app)
    mine = {v.field: v for v in values if v.row_id == world.connection.id} | {
        v.field: v for v in values
        if v.field == "access_token" and v.tenant_id == world.tenant.id
        and v.row_id != world.connection.id
    }
    with get_db(app).transaction(write=False) as session:
        stored = session.scalars(
            select(AccessToken).where(AccessToken.connection_id == world.connection.id)
        ).one()
        session.expunge(stored)
    refresh = mine["refresh_token"]
    foreign = [v.blob for v in values if v.row_id not in (refresh.row_id, stored.id)]
    stride = 16
    calls = world.emulator.calls()["token"]["refresh_token"]
    # The stored access token: swapped for every other bound value, cut and flipped.
    bound = [blob for blob in foreign if not is_unbound(blob)]
    for tampered in bound + [blob for _, blob in _variants(stored.token, stride)]:
        _reset(app, world.connection.id, refresh.blob, stored)
        with get_db(app).transaction() as session:
            session.execute(
                update(AccessToken).where(AccessToken.id == stored.id).values(token=tampered)
            )
        _refused_cleanly(world, refresh.plain)
    # A value bound to its row only (format 1) in an access token's place reads as a cache
    # sealed before access tokens were bound: never opened, refreshed with the connection's own
    # refresh token instead, the connection untouched (as if the row had been deleted).
    unbound = [v for v in values if is_unbound(v.blob) and v.row_id != refresh.row_id]
    assert unbound
    for value in unbound:
        _reset(app, world.connection.id, refresh.blob, stored)
        with get_db(app).transaction() as session:
            session.execute(
                update(AccessToken).where(AccessToken.id == stored.id).values(token=value.blob)
            )
        answer = world.token()
        assert answer.status_code == 200, answer.json
        assert value.plain.decode() not in answer.get_data(as_text=True)
    calls += len(unbound)
    # The refresh token (no access token stored): swapped, cut and flipped.
    for tampered in foreign + [blob for _, blob in _variants(refresh.blob, stride)]:
        _reset(app, world.connection.id, tampered, None)
        _refused_cleanly(world, refresh.plain)
    # Nothing tampered ever reached Google; the untouched value still works.
    assert world.emulator.calls()["token"]["refresh_token"] == calls
    _reset(app, world.connection.id, refresh.blob, stored)
    assert world.token().status_code == 200
    assert other.token().status_code == 200


def test_swapped_data_key_row_is_an_audited_token_unreadable_not_a_500(
    worlds: list[World],
) -> None:
    world, other = worlds[0], worlds[1]
    app = world.app
    assert world.connection is not None
    with get_db(app).transaction() as session:
        mine = session.scalars(select(DataKey).where(DataKey.tenant_id == world.tenant.id)).one()
        theirs = session.scalars(
            select(DataKey).where(DataKey.tenant_id == other.tenant.id)
        ).one()
        # Another tenant's wrapped key, copied over this tenant's: same master, wrong context.
        mine.wrapped, mine.master_key_id = theirs.wrapped, theirs.master_key_id
    get_keys(app).forget()  # as a process that has not cached this tenant's key yet would be
    before = _denials(app)
    calls = world.emulator.calls()["token"]["refresh_token"]
    answer = world.token()
    assert answer.status_code == 409, answer.get_data(as_text=True)
    assert answer.json["error"] == "reauth_required"
    assert answer.json["reason"] == "token_unreadable"
    assert _denials(app) == before + 1
    assert world.emulator.calls()["token"]["refresh_token"] == calls
    with get_db(app).transaction(write=False) as session:
        conn = session.get(Connection, world.connection.id)
        assert conn is not None and conn.status == "needs_reauth"
    assert other.token().status_code == 200  # the other tenant is untouched
