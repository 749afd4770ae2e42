"""A data key is wrapped only by the primary master key the live keys use (issue 12 item 2).

A key file that lacks the deployment's primary master (or names an older one first) used to
make `keys rotate-tenant` print "data key vN is current" and leave vN wrapped by a master no
other process would open. Everything is checked before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from broker.db import get_db
from broker.keys import CryptoError, get_keys
from broker.keys.sealed import FileKeyProvider, new_key
from broker.models import DataKey
from broker.tenancy import key_rotation
from tests.factories import make_tenant


def _data_keys(app: Flask) -> int:
    with get_db(app).transaction(write=False) as session:
        return int(session.scalar(select(func.count()).select_from(DataKey)) or 0)


@pytest.mark.parametrize(
    ("stale", "message"),
    [(["m1"], "master key m2 wraps live keys but is not in"),
     (["m1", "m2"], "the primary master key m1")],
    ids=["primary_missing", "older_primary_first"],
)
def test_rotation_with_a_stale_key_file_writes_nothing(
    make_app: Callable[..., Flask], tmp_path: Path, stale: list[str], message: str,
) -> None:
    ring = {"m2": new_key(), "m1": new_key()}
    current, old = tmp_path / "current.keys", tmp_path / "stale.keys"
    FileKeyProvider(current).write(ring)
    FileKeyProvider(old).write({k: ring[k] for k in stale})
    app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(current))
    tenant = make_tenant(app)
    stale_app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(old))
    before = _data_keys(app)
    with pytest.raises(CryptoError) as refused, get_db(stale_app).transaction() as session:
        key_rotation.rotate(session, get_keys(stale_app), tenant.id, actor="test")
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert _data_keys(app) == before
    # The current key file still rotates.
    with get_db(app).transaction() as session:
        assert key_rotation.rotate(session, get_keys(app), tenant.id, actor="test") == 2


def _broker(instance: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_INSTANCE_PATH"] = str(instance)
    return subprocess.run(
        [sys.executable, "-c", "from broker.cli import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )


def test_cli_rotate_tenant_refuses_a_key_file_without_the_primary(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert _broker(instance, "init").returncode == 0
    created = _broker(instance, "tenant", "create", "acme", "--name", "A",
                      "--admin", "a@acme.test")
    assert created.returncode == 0, created.stderr
    key_file = instance / "master.keys"
    stale = key_file.read_text()
    assert _broker(instance, "keys", "add-master").returncode == 0
    assert _broker(instance, "keys", "rotate-master").returncode == 0
    current = key_file.read_text()
    # A key file from before the master rotation: it lacks the new primary.
    key_file.write_text(stale)
    refused = _broker(instance, "keys", "rotate-tenant", "acme")
    assert refused.returncode == 1
    assert "is current" not in refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "wraps live keys but is not in" in lines[0], refused.stderr
    key_file.write_text(current)
    listed = _broker(instance, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    acme = [line for line in listed.stdout.splitlines() if line.startswith("acme")]
    assert [line.split("\t")[1] for line in acme] == ["v1"]
