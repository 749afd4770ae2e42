"""Master keys in SoftHSM2 and in moto's KMS: the token flow, context binding, outages."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db import get_db
from broker.keys import KeyServiceError, SealError, get_keys
from broker.keys.awskms import AwsKmsMaster
from broker.keys.pkcs11 import module
from broker.keys.sealed import RemoteOptions
from broker.keys.service import dek_context
from broker.models import Connection, DataKey
from tests.plugins.emulator import EmulatorControls
from tests.plugins.keyservices import Moto, SoftHsm
from tests.plugins.world import World, broker_config
from tests.ports import free_port


def _errors(provider: str) -> float:
    value = REGISTRY.get_sample_value("broker_key_service_errors_total", {"provider": provider})
    return value or 0.0


@pytest.fixture
def hsm_app(
    make_app: Callable[..., Flask], emulator: EmulatorControls, softhsm: SoftHsm
) -> Callable[..., Flask]:
    """Build broker apps whose master key is a fresh key on the SoftHSM token."""
    reference = softhsm.new_key()

    def factory(**overrides: Any) -> Flask:
        return make_app(**broker_config(
            emulator, MASTER_KEYS=reference, PKCS11_PIN=softhsm.pin, **overrides))

    return factory


@pytest.fixture
def kms_app(
    make_app: Callable[..., Flask], emulator: EmulatorControls, moto: Moto
) -> Callable[..., Flask]:
    """Build broker apps whose master key is a fresh key in moto's KMS."""
    reference = moto.new_key()

    def factory(**overrides: Any) -> Flask:
        return make_app(**broker_config(
            emulator, MASTER_KEYS=reference, KEY_SERVICE_TIMEOUT=2, **overrides))

    return factory


def _masters(app: Flask) -> set[str]:
    with get_db(app).transaction(write=False) as session:
        return set(session.scalars(select(DataKey.master_key_id)))


def test_token_flow_with_the_master_in_softhsm(
    hsm_app: Callable[..., Flask], make_world: Callable[..., World], softhsm: SoftHsm
) -> None:
    app = hsm_app()
    world = make_world(app=app)
    first = world.token()
    assert first.status_code == 200, first.json
    master = get_keys(app).keyring.masters()[0]
    assert master.provider == "pkcs11" and not master.exportable
    assert _masters(app) == {master.key_id}
    # Another process (a fresh app) opens the same rows through the token, not from a copy.
    other = hsm_app()
    again = world.token(client=other.test_client())
    assert again.status_code == 200 and again.json["access_token"] == first.json["access_token"]
    assert get_keys(other).unwraps == 1


def test_the_hsm_key_cannot_be_read_out(softhsm: SoftHsm) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    label = softhsm.new_key().rpartition("key=")[2]

    def inspect(session: Any) -> None:
        key = session.get_key(label=label, key_type=KeyType.AES,
                              object_class=ObjectClass.SECRET_KEY)
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.VALUE]

    # The process's one logged-in session on the token (a second login is refused).
    module(softhsm.module).run(softhsm.token, softhsm.pin, inspect)


def test_token_flow_with_the_master_in_kms(
    kms_app: Callable[..., Flask], make_world: Callable[..., World]
) -> None:
    app = kms_app()
    world = make_world(app=app)
    first = world.token()
    assert first.status_code == 200, first.json
    master = get_keys(app).keyring.masters()[0]
    assert master.provider == "awskms" and not master.exportable
    other = kms_app()
    again = world.token(client=other.test_client())
    assert again.status_code == 200 and again.json["access_token"] == first.json["access_token"]


def test_kms_context_keeps_a_wrapped_key_in_its_tenant(
    kms_app: Callable[..., Flask], make_world: Callable[..., World]
) -> None:
    app = kms_app()
    world_a, world_b = make_world(app=app), make_world(app=app)
    keyring = get_keys(app).keyring
    with get_db(app).transaction(write=False) as session:
        dek = session.scalars(select(DataKey).where(DataKey.tenant_id == world_a.tenant.id)).one()
    assert keyring.unwrap(dek.master_key_id, dek.wrapped, dek_context(dek.tenant_id, 1))
    for context in (dek_context(world_b.tenant.id, 1), dek_context(dek.tenant_id, 2),
                    "audit|1"):
        with pytest.raises(SealError):
            keyring.unwrap(dek.master_key_id, dek.wrapped, context)


def test_hsm_refuses_a_blob_of_another_context(hsm_app: Callable[..., Flask]) -> None:
    keyring = get_keys(hsm_app()).keyring
    key_id, blob = keyring.wrap(b"k" * 32, "dek|t1|1")
    assert keyring.unwrap(key_id, blob, "dek|t1|1") == b"k" * 32
    with pytest.raises(SealError):
        keyring.unwrap(key_id, blob, "dek|t2|1")
    with pytest.raises(SealError):
        keyring.unwrap(key_id, blob[:-1] + bytes([blob[-1] ^ 1]), "dek|t1|1")


@pytest.fixture
def moto_stopped(moto: Moto) -> Iterator[Moto]:
    """Hand the test a moto it may stop; it is serving again afterwards."""
    yield moto
    if not moto.serving:
        moto.start()


def test_stopping_kms_keeps_warm_handouts_and_turns_cold_ones_into_503(
    kms_app: Callable[..., Flask], make_world: Callable[..., World], moto_stopped: Moto
) -> None:
    app = kms_app()
    warm, cold = make_world(app=app), make_world(app=app)
    serving = kms_app()  # another process: only what it has unwrapped is in its cache
    assert warm.token(client=serving.test_client()).status_code == 200
    errors = _errors("awskms")
    moto_stopped.stop()
    for _ in range(3):
        assert warm.token(client=serving.test_client()).status_code == 200
    refused = cold.token(client=serving.test_client())
    assert refused.status_code == 503, refused.json
    assert refused.json["error"] == "key_service_unavailable"
    assert refused.headers["Retry-After"].isdigit()
    assert _errors("awskms") == errors + 1
    moto_stopped.start()
    # Recovery without a restart: the next cold hand-out unwraps through KMS again.
    assert cold.token(client=serving.test_client()).status_code == 200


def test_nothing_is_written_under_a_key_that_could_not_be_checked(
    kms_app: Callable[..., Flask], make_world: Callable[..., World], moto_stopped: Moto
) -> None:
    app = kms_app()
    warm, cold = make_world(app=app), make_world(app=app)
    assert warm.connection is not None and cold.connection is not None
    serving = kms_app()
    first = warm.token(client=serving.test_client())
    assert first.status_code == 200
    with get_db(app).transaction(write=False) as session:
        before = session.get(Connection, cold.connection.id)
        assert before is not None
        stored = (before.refresh_token, before.version)
        keys_before = session.scalars(select(DataKey.id)).all()
    moto_stopped.stop()
    # Warm: a refresh (the job says Google refused the token) opens and seals with the cached
    # data key; KMS is never asked.
    rejected = {"user": warm.user.email, "rejected_token": first.json["access_token"]}
    refreshed = warm.token(rejected, client=serving.test_client())
    assert refreshed.status_code == 200, refreshed.json
    assert refreshed.json["access_token"] != first.json["access_token"]
    # Cold: the refresh token cannot be opened, so Google is not called and nothing changes.
    refused = cold.token(client=serving.test_client())
    assert refused.status_code == 503 and refused.json["error"] == "key_service_unavailable"
    # A new data key cannot be wrapped: the rotation is refused and leaves no row behind.
    with pytest.raises(KeyServiceError), get_db(serving).transaction() as session:
        get_keys(serving).rotate_tenant(session, cold.tenant.id)
    with get_db(app).transaction(write=False) as session:
        after = session.get(Connection, cold.connection.id)
        assert after is not None and (after.refresh_token, after.version) == stored
        assert session.scalars(select(DataKey.id)).all() == keys_before


def test_a_kms_that_does_not_answer_times_out_as_unavailable(
    moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real listening socket that accepts and never answers: KMS hung, not down.
    port = free_port()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", port))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        master = AwsKmsMaster("alias/never", "kms.never", RemoteOptions(timeout=0.25))
        with pytest.raises(KeyServiceError):
            master.unwrap(b"x" * 64, "dek|t|1")


def test_a_failing_pkcs11_token_answers_503_and_recovers(
    hsm_app: Callable[..., Flask], make_world: Callable[..., World], softhsm: SoftHsm
) -> None:
    app = hsm_app()
    warm, cold = make_world(app=app), make_world(app=app)
    serving = hsm_app()
    assert warm.token(client=serving.test_client()).status_code == 200
    away = softhsm.tokens.with_name("tokens-away")
    softhsm.tokens.rename(away)  # the token disappears under the open session
    try:
        assert warm.token(client=serving.test_client()).status_code == 200
        refused = cold.token(client=serving.test_client())
        assert refused.status_code == 503 and refused.json["error"] == "key_service_unavailable"
    finally:
        away.rename(softhsm.tokens)
    assert cold.token(client=serving.test_client()).status_code == 200


def test_a_cold_key_is_unwrapped_once_however_many_ask(
    hsm_app: Callable[..., Flask], make_world: Callable[..., World]
) -> None:
    app = hsm_app()
    world = make_world(app=app)
    serving = hsm_app()
    keys = get_keys(serving)
    with get_db(app).transaction(write=False) as session:
        dek = session.scalars(select(DataKey).where(DataKey.tenant_id == world.tenant.id)).one()
    start = threading.Barrier(8)
    opened: list[bytes] = []

    def unwrap() -> None:
        start.wait()
        opened.append(keys._usable(dek))

    threads = [threading.Thread(target=unwrap) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 8 and len(set(opened)) == 1
    assert keys.unwraps == 1
