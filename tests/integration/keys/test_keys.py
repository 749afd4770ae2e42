"""Data keys in the database: sealing rows, counting, rotation phases, retirement, shredding."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.keys.extension import get_keys
from broker.keys.sealed import FileKeyProvider, Keyring, SealError, format_key_line, new_key
from broker.keys.service import KeyService, reseal_tenant
from broker.models import Connection, DataKey
from tests.factories import make_connection, make_tenant, make_user

GMAIL_READ = "https://www.googleapis.com/auth/gmail.readonly"


def _open_refresh(app: Flask, keys: KeyService, connection_id: uuid.UUID) -> bytes:
    with get_db(app).transaction(write=False) as session:
        row = session.get(Connection, connection_id)
        assert row is not None and row.refresh_token is not None
        return keys.open(session, row.tenant_id, row.id, "refresh_token", row.refresh_token)


def test_row_value_opens_only_in_its_own_row_and_tenant(app: Flask) -> None:
    keys = get_keys(app)
    tenant_a, tenant_b = make_tenant(app), make_tenant(app)
    conn_a = make_connection(app, make_user(app, tenant_a), scopes=[GMAIL_READ],
                             refresh_token="1//a")
    conn_b = make_connection(app, make_user(app, tenant_b), scopes=[GMAIL_READ],
                             refresh_token="1//b")
    assert _open_refresh(app, keys, conn_a.id) == b"1//a"
    with get_db(app).transaction(write=False) as session:
        blob_a = session.get(Connection, conn_a.id).refresh_token  # type: ignore[union-attr]
        assert blob_a is not None
        with pytest.raises(SealError):
            keys.open(session, tenant_b.id, conn_b.id, "refresh_token", blob_a)
        with pytest.raises(SealError):
            keys.open(session, tenant_a.id, conn_b.id, "refresh_token", blob_a)
        with pytest.raises(SealError):
            keys.open(session, tenant_a.id, conn_a.id, "access_token", blob_a)


def test_seals_are_counted_in_blocks_and_rotate_at_threshold(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(SEAL_BLOCK=5, SEAL_ROTATE_THRESHOLD=12)
    keys = get_keys(app)
    tenant = make_tenant(app)
    with get_db(app).transaction() as session:
        for _ in range(11):
            keys.seal(session, tenant.id, uuid.uuid4(), "f", b"x")
        rows = session.scalars(
            select(DataKey).where(DataKey.tenant_id == tenant.id).order_by(DataKey.version)
        ).all()
    # 11 seals = blocks of 5, 5, then one more block that would pass 12: a new key took it.
    assert [(r.version, r.seal_count) for r in rows] == [(1, 10), (2, 5)]


def test_values_survive_each_rotation_step_and_retired_key_no_longer_opens(
    make_app, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m1": new_key()})
    # No data-key cache: retirement need not wait for other processes' cached blocks.
    app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file), DATA_KEY_CACHE_SECONDS=0)
    keys = get_keys(app)
    tenant = make_tenant(app)
    user = make_user(app, tenant)
    connection = make_connection(app, user, scopes=[GMAIL_READ], refresh_token="1//before")
    with get_db(app).transaction(write=False) as session:
        old_blob = session.get(Connection, connection.id).refresh_token  # type: ignore[union-attr]

    # Phase 1: add a master key (not primary); phase 2: promote and rewrap; phase 3: retire.
    ring = FileKeyProvider(key_file).load()
    FileKeyProvider(key_file).write({**ring, "m2": new_key()})
    assert _open_refresh(app, keys, connection.id) == b"1//before"
    ring = FileKeyProvider(key_file).load()
    FileKeyProvider(key_file).write({"m2": ring["m2"], "m1": ring["m1"]})
    keys.keyring.reload()
    with get_db(app).transaction() as session:
        assert keys.rewrap_all(session) >= 1
        assert keys.master_key_users(session, "m1") == 0
    FileKeyProvider(key_file).write({"m2": ring["m2"]})
    fresh = KeyService(Keyring(FileKeyProvider(key_file)))
    assert _open_refresh(app, fresh, connection.id) == b"1//before"

    # Tenant rotation: new writes use v2; the re-seal pass moves old rows and retires v1.
    with get_db(app).transaction() as session:
        assert keys.rotate_tenant(session, tenant.id) == 2
    report = reseal_tenant(keys, get_db(app), tenant.id)
    assert report.resealed == 1 and report.retired == (1,)
    assert _open_refresh(app, keys, connection.id) == b"1//before"
    with get_db(app).transaction(write=False) as session:
        with pytest.raises(SealError):
            KeyService(Keyring(FileKeyProvider(key_file))).open(
                session, tenant.id, connection.id, "refresh_token", old_blob or b""
            )


def test_shredded_tenant_values_never_open(app: Flask) -> None:
    keys = get_keys(app)
    tenant = make_tenant(app)
    connection = make_connection(app, make_user(app, tenant), scopes=[GMAIL_READ])
    with get_db(app).transaction(write=False) as session:
        blob = session.get(Connection, connection.id).refresh_token  # type: ignore[union-attr]
    with get_db(app).transaction() as session:
        assert keys.shred_tenant(session, tenant.id) == 1
    with get_db(app).transaction(write=False) as session, pytest.raises(SealError):
        keys.open(session, tenant.id, connection.id, "refresh_token", blob or b"")


def test_unknown_master_key_id_reloads_the_source(make_app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "master.keys"
    first = new_key()
    key_file.write_text(format_key_line("m1", first) + "\n")
    key_file.chmod(0o600)
    app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file))
    stale = get_keys(app)
    # Another process adds and promotes m2, then writes a tenant under it.
    key_file.write_text(format_key_line("m2", new_key()) + "\n" + format_key_line("m1", first))
    other = KeyService(Keyring(FileKeyProvider(key_file)))
    tenant_id = uuid.uuid4()
    from broker.models import Tenant

    with get_db(app).transaction() as session:
        session.add(Tenant(id=tenant_id, slug=f"r{tenant_id.hex[:6]}", name="R"))
        session.flush()
        blob = other.seal(session, tenant_id, "row", "f", b"secret")
    with get_db(app).transaction(write=False) as session:
        assert stale.open(session, tenant_id, "row", "f", blob) == b"secret"


def test_retirement_waits_for_other_processes_cached_blocks(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(DATA_KEY_CACHE_SECONDS=300)
    keys = get_keys(app)
    tenant = make_tenant(app)
    make_connection(app, make_user(app, tenant), scopes=[GMAIL_READ])
    with get_db(app).transaction() as session:
        keys.rotate_tenant(session, tenant.id)
    report = reseal_tenant(keys, get_db(app), tenant.id)
    # Rows moved at once, but v1 stays until no process can still hold a block of it.
    assert report.resealed == 1 and report.retired == ()


def test_reseal_skips_a_tampered_row_and_keeps_its_key(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(DATA_KEY_CACHE_SECONDS=0)
    keys = get_keys(app)
    tenant = make_tenant(app)
    good = make_connection(app, make_user(app, tenant), scopes=[GMAIL_READ])
    bad = make_connection(app, make_user(app, tenant), scopes=[GMAIL_READ])
    with get_db(app).transaction() as session:
        row = session.get(Connection, bad.id)
        assert row is not None and row.refresh_token is not None
        row.refresh_token = row.refresh_token[:-1] + bytes([row.refresh_token[-1] ^ 1])
        keys.rotate_tenant(session, tenant.id)
    report = reseal_tenant(keys, get_db(app), tenant.id)
    assert (report.resealed, report.unreadable, report.retired) == (1, 1, ())
    assert _open_refresh(app, keys, good.id) == b"1//test-refresh"


def test_seal_ready_seals_only_from_a_reserved_block(app: Flask) -> None:
    # The refresh path seals without the database while this process holds a nonce block;
    # before one is reserved (in a transaction, by `seal`) it must say so, not seal.
    keys = get_keys(app)
    tenant = make_tenant(app, "ready")
    row = uuid.uuid4()
    assert keys.seal_ready(tenant.id, row, "access_token", b"ya29.x") is None
    with get_db(app).transaction() as session:
        keys.seal(session, tenant.id, row, "access_token", b"ya29.first")
    sealed = keys.seal_ready(tenant.id, row, "access_token", b"ya29.x", bound=("b",))
    assert sealed is not None
    with get_db(app).transaction(write=False) as session:
        assert keys.open(session, tenant.id, row, "access_token", sealed, bound=("b",)) == b"ya29.x"
        with pytest.raises(SealError):
            keys.open(session, tenant.id, uuid.uuid4(), "access_token", sealed, bound=("b",))
