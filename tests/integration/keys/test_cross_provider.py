"""Master rotation across providers (key file -> HSM, online) and the key CLI helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import select

from broker.cli import cli
from broker.db import get_db
from broker.keys import FileKeyProvider, get_keys, new_key
from broker.models import AuditKey, Connection, DataKey
from tests.plugins.emulator import EmulatorControls
from tests.plugins.keyservices import Moto, SoftHsm
from tests.plugins.world import World, broker_config


def run(app: Flask, *args: str) -> Result:
    """Run a `broker` command against this app."""
    return app.test_cli_runner().invoke(cli, list(args))


def _wrapping(app: Flask) -> set[str]:
    with get_db(app).transaction(write=False) as session:
        return set(session.scalars(
            select(DataKey.master_key_id).where(DataKey.retired_at.is_(None))
        )) | set(session.scalars(select(AuditKey.master_key_id)))


def test_a_file_master_moves_into_the_hsm_while_handouts_run(
    make_app: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, softhsm: SoftHsm, tmp_path: Path,
) -> None:
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m-file": new_key()})
    config = broker_config(emulator, MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file),
                           PKCS11_PIN=softhsm.pin)
    admin, serving = make_app(**config), make_app(**config)  # two processes, one key file
    worlds = [make_world(app=admin) for _ in range(3)]
    with get_db(admin).transaction(write=False) as session:
        sealed = {w.connection.id: session.get(Connection, w.connection.id).refresh_token  # type: ignore[union-attr]
                  for w in worlds}
    outcomes: list[int] = []

    def handouts() -> None:
        # A fresh cache now and then: the serving process must unwrap under whichever master.
        get_keys(serving).forget()
        outcomes.extend(w.token(client=serving.test_client()).status_code for w in worlds)

    handouts()
    reference = softhsm.new_key()
    hsm_id = reference.rpartition("key=")[2]
    added = run(admin, "keys", "add-master", reference)
    assert added.exit_code == 0, added.output
    handouts()
    rotated = run(admin, "keys", "rotate-master", hsm_id)
    assert rotated.exit_code == 0, rotated.output
    assert f"{hsm_id} is primary" in rotated.output
    handouts()
    assert _wrapping(admin) == {hsm_id}
    retired = run(admin, "keys", "retire-master", "m-file")
    assert retired.exit_code == 0, retired.output
    handouts()
    # New data keys are wrapped in the token, by the process that never ran a command too.
    make_world(app=serving)
    handouts()
    assert outcomes and set(outcomes) == {200}
    assert FileKeyProvider(key_file).entries() == [reference]
    assert _wrapping(admin) == {hsm_id}
    with get_db(admin).transaction(write=False) as session:
        # Tokens were not re-sealed: only the data keys' wrapping changed.
        assert {cid: session.get(Connection, cid).refresh_token  # type: ignore[union-attr]
                for cid in sealed} == sealed
    check = run(admin, "keys", "check")
    assert check.exit_code == 0, check.output


@pytest.mark.usefixtures("postgres_only")
def test_concurrent_handouts_see_no_failure_while_the_master_moves_into_the_hsm(
    make_app: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, softhsm: SoftHsm, tmp_path: Path,
) -> None:
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m-file": new_key()})
    config = broker_config(emulator, MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file),
                           PKCS11_PIN=softhsm.pin)
    admin, serving = make_app(**config), make_app(**config)
    worlds = [make_world(app=admin) for _ in range(3)]
    reference = softhsm.new_key()
    hsm_id = reference.rpartition("key=")[2]
    done = threading.Event()
    outcomes: list[int] = []

    def handouts() -> None:
        client = serving.test_client()
        while not done.is_set():
            for number, world in enumerate(worlds):
                if number == 0:
                    get_keys(serving).forget()  # keep unwrapping under whichever master
                outcomes.append(world.token(client=client).status_code)

    thread = threading.Thread(target=handouts)
    thread.start()
    try:
        for args in (("add-master", reference), ("rotate-master", hsm_id),
                     ("retire-master", "m-file")):
            result = run(admin, "keys", *args)
            assert result.exit_code == 0, result.output
        # Let the serving side make at least a few more rounds under the HSM master alone.
        seen = len(outcomes)
        deadline = time.monotonic() + 30
        while len(outcomes) < seen + 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        done.set()
        thread.join()
    assert len(outcomes) >= 6 and set(outcomes) == {200}
    assert _wrapping(admin) == {hsm_id}


def test_a_kms_master_rotates_into_the_hsm(
    make_app: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, softhsm: SoftHsm, moto: Moto, tmp_path: Path,
) -> None:
    key_file = tmp_path / "master.keys"
    kms = moto.new_key()
    FileKeyProvider(key_file).write_entries([kms])
    app = make_app(**broker_config(emulator, MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file),
                                   PKCS11_PIN=softhsm.pin))
    world = make_world(app=app)
    hsm = softhsm.new_key()
    assert run(app, "keys", "add-master", hsm).exit_code == 0
    assert run(app, "keys", "rotate-master").exit_code == 0
    hsm_id = hsm.rpartition("key=")[2]
    assert _wrapping(app) == {hsm_id}
    get_keys(app).forget()
    assert world.token().status_code == 200


def test_keys_list_is_the_crypto_inventory(
    make_app: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, softhsm: SoftHsm, tmp_path: Path,
) -> None:
    key_file = tmp_path / "master.keys"
    local = new_key()
    FileKeyProvider(key_file).write({"m-file": local})
    hsm = softhsm.new_key()
    FileKeyProvider(key_file).write_entries([*FileKeyProvider(key_file).entries(), hsm])
    app = make_app(**broker_config(emulator, MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file),
                                   PKCS11_PIN=softhsm.pin))
    make_world(app=app)
    listed = run(app, "keys", "list")
    assert listed.exit_code == 0, listed.output
    lines = {line.split("\t")[0].strip(): line for line in listed.output.splitlines()}
    file_line, hsm_line = lines["m-file"], lines[hsm.rpartition("key=")[2]]
    assert "provider=file" in file_line and "exportable=yes" in file_line
    assert "primary" in file_line and "wraps=1 data keys, 0 audit keys" in file_line
    assert "provider=pkcs11" in hsm_line and "exportable=no" in hsm_line
    assert "wraps=0 data keys" in hsm_line and f"token {softhsm.token}" in hsm_line
    assert softhsm.pin not in listed.output


def test_init_hsm_creates_a_key_and_prints_the_setting(
    make_app: Callable[..., Flask], softhsm: SoftHsm
) -> None:
    app = make_app(PKCS11_PIN=softhsm.pin)
    made = run(app, "keys", "init-hsm", "--module", softhsm.module, "--token", softhsm.token,
               "--key", "made-by-cli")
    assert made.exit_code == 0, made.output
    value = made.output.strip().removeprefix("BROKER_MASTER_KEYS=")
    assert value == softhsm.reference("made-by-cli")
    again = run(app, "keys", "init-hsm", "--module", softhsm.module, "--token", softhsm.token,
                "--key", "made-by-cli")
    assert again.exit_code == 1 and "already has a key labelled" in again.output
    # The printed value is a working master.
    hsm_app = make_app(MASTER_KEYS=value, PKCS11_PIN=softhsm.pin)
    keyring = get_keys(hsm_app).keyring
    key_id, blob = keyring.wrap(b"d" * 32, "dek|t|1")
    assert keyring.unwrap(key_id, blob, "dek|t|1") == b"d" * 32


def test_init_hsm_refuses_bad_input_in_one_line(
    make_app: Callable[..., Flask], softhsm: SoftHsm
) -> None:
    no_pin = make_app()
    cases = [
        (no_pin, ["--module", softhsm.module, "--token", softhsm.token, "--key", "k1"],
         "BROKER_PKCS11_PIN"),
        (make_app(PKCS11_PIN=softhsm.pin),
         ["--module", "/nowhere/lib.so", "--token", softhsm.token, "--key", "k1"],
         "no such PKCS#11 library"),
        (make_app(PKCS11_PIN=softhsm.pin),
         ["--module", softhsm.module, "--token", "no-such-token", "--key", "k1"],
         "did not answer"),
        (make_app(PKCS11_PIN=softhsm.pin),
         ["--module", softhsm.module, "--token", softhsm.token, "--key", "bad label!"],
         "key id"),
    ]
    for app, args, message in cases:
        result = run(app, "keys", "init-hsm", *args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert softhsm.pin not in result.output


def test_check_names_the_keys_that_do_not_open(
    make_app: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, tmp_path: Path,
) -> None:
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m1": new_key()})
    app = make_app(**broker_config(emulator, MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file)))
    world = make_world(app=app)
    assert run(app, "keys", "check").exit_code == 0
    with get_db(app).transaction() as session:
        dek = session.scalars(select(DataKey).where(DataKey.tenant_id == world.tenant.id)).one()
        dek.wrapped = dek.wrapped[:-1] + bytes([dek.wrapped[-1] ^ 1])
    get_keys(app).forget()
    checked = run(app, "keys", "check")
    assert checked.exit_code == 1
    assert f"{world.tenant.slug} data key v1 (master m1)" in checked.output
    assert "1 keys do not open" in checked.output


def test_add_master_refuses_a_reference_that_does_not_work(
    make_app: Callable[..., Flask], softhsm: SoftHsm, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m1": new_key()})
    app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file), PKCS11_PIN=softhsm.pin)
    for reference, message in [
        (softhsm.reference("no-such-key"), "did not answer"),
        ("pkcs11:module=/x.so;token=t", "missing key="),
        ("awskms:not a key", "awskms reference"),
        ("m2:abc", "starts with pkcs11: or awskms:"),
    ]:
        result = run(app, "keys", "add-master", reference)
        assert result.exit_code == 1 and message in result.output, result.output
    assert FileKeyProvider(key_file).entries() == [FileKeyProvider(key_file).entries()[0]]
    assert len(FileKeyProvider(key_file).entries()) == 1
