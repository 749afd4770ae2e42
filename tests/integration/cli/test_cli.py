"""The `broker` command on a fresh instance folder, in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_port


def broker(
    instance: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console entry point with only this instance folder configured."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    clean.update({"BROKER_INSTANCE_PATH": str(instance)}, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", "from broker.cli import main; main()", *args],
        capture_output=True, text=True, env=clean, timeout=180, check=False,
    )


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return tmp_path / "instance"


def test_help_works_with_nothing_configured(instance: Path) -> None:
    result = broker(instance, "--help")
    assert result.returncode == 0
    for command in ("init", "db", "tenant", "user", "keys", "serve"):
        assert command in result.stdout
    assert not instance.exists()


def test_init_is_idempotent_and_never_overwrites_a_key(instance: Path) -> None:
    assert broker(instance, "init").returncode == 0
    keys = (instance / "master.keys").read_text()
    assert (instance / "master.keys").stat().st_mode & 0o777 == 0o600
    assert (instance / "broker.db").exists()
    second = broker(instance, "init")
    assert second.returncode == 0
    assert (instance / "master.keys").read_text() == keys


def test_tenant_lifecycle_and_clear_errors(instance: Path) -> None:
    assert broker(instance, "init").returncode == 0
    create = ["tenant", "create", "acme", "--name", "Acme", "--domain", "acme.test",
              "--admin", "admin@acme.test"]
    assert broker(instance, *create).returncode == 0
    again = broker(instance, *create)
    assert again.returncode == 1
    assert again.stderr.strip() == "Error: tenant 'acme' already exists"
    taken = broker(instance, "tenant", "create", "other", "--name", "O", "--domain",
                   "ACME.test", "--admin", "a@other.test")
    assert taken.returncode == 1 and "already belongs to tenant 'acme'" in taken.stderr
    assert "Traceback" not in again.stderr + taken.stderr
    listing = broker(instance, "user", "list", "--tenant", "acme")
    assert "admin@acme.test\tadmin\tinvited" in listing.stdout
    deleted = broker(instance, "tenant", "delete", "acme", "--yes")
    assert deleted.returncode == 0
    assert "acme" not in broker(instance, "tenant", "list").stdout


def test_corrupted_key_file_is_named(instance: Path) -> None:
    assert broker(instance, "init").returncode == 0
    (instance / "master.keys").write_text("garbage\n")
    result = broker(instance, "tenant", "create", "x", "--name", "X", "--admin", "a@x.test")
    assert result.returncode == 1
    assert str(instance / "master.keys") in result.stderr
    assert "Traceback" not in result.stderr
    again = broker(instance, "init")
    assert again.returncode == 1 and "master.keys" in again.stderr


def test_keys_rotation_commands(instance: Path) -> None:
    assert broker(instance, "init").returncode == 0
    broker(instance, "tenant", "create", "acme", "--name", "A", "--admin", "a@acme.test")
    first = (instance / "master.keys").read_text().split(":")[0]
    assert broker(instance, "keys", "add-master").returncode == 0
    refused = broker(instance, "keys", "retire-master", first)
    assert refused.returncode == 1 and "primary" in refused.stderr
    assert broker(instance, "keys", "rotate-master").returncode == 0
    assert broker(instance, "keys", "retire-master", first).returncode == 0
    rotated = broker(instance, "keys", "rotate-tenant", "acme")
    assert rotated.returncode == 0 and "v2 is current" in rotated.stdout


def test_unreachable_database_is_one_line(instance: Path) -> None:
    result = broker(instance, "tenant", "list",
                    env={"BROKER_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/none"})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: database unavailable")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", ["1", "3"])
def test_serve_answers_health_and_readiness(instance: Path, workers: str) -> None:
    import time

    import httpx

    assert broker(instance, "init").returncode == 0
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    clean["BROKER_INSTANCE_PATH"] = str(instance)
    process = subprocess.Popen(
        [sys.executable, "-c", "from broker.cli import main; main()", "serve", "--port",
         str(port), "--workers", workers],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert health.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=20)
    # SQLite serves one process with threads, and says so when asked for more.
    assert ("one worker process" in err) is (workers != "1")
    assert "1 workers" in out


def test_worker_once_runs_every_duty(instance: Path) -> None:
    import json

    assert broker(instance, "init").returncode == 0
    result = broker(instance, "worker", "--once")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"refresh_due", "chain_audit", "retry_revocations", "reseal"}
    assert all(count >= 0 for count in report.values())


def test_worker_once_fails_loudly_when_a_duty_fails(instance: Path) -> None:
    import json
    import sqlite3
    from contextlib import closing

    assert broker(instance, "init").returncode == 0
    created = broker(instance, "tenant", "create", "acme", "--name", "Acme", "--domain",
                     "acme.test", "--admin", "it@acme.test")
    assert created.returncode == 0, created.stderr
    hook = broker(instance, "webhook", "add", "https://hooks.example.com/x", "--tenant", "acme")
    assert hook.returncode == 0, hook.stderr  # a row sealed under data key v1
    rotated = broker(instance, "keys", "rotate-tenant", "acme", "--no-reseal")
    assert rotated.returncode == 0, rotated.stderr
    # The current data key no longer unwraps: re-sealing the webhook's secret really fails.
    with closing(sqlite3.connect(instance / "broker.db")) as db, db:
        assert db.execute(
            "UPDATE data_keys SET wrapped = zeroblob(60) WHERE version = 2").rowcount == 1
    result = broker(instance, "worker", "--once")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["reseal"] == -1
    assert [duty for duty, count in report.items() if count < 0] == ["reseal"]
    assert result.stderr.splitlines() == [
        "Error: worker duty reseal failed (CryptoError); set BROKER_DEBUG=1 for details"
    ]
    debug = broker(instance, "worker", "--once", env={"BROKER_DEBUG": "1"})
    assert debug.returncode == 1 and json.loads(debug.stdout)["reseal"] == -1
    assert debug.stderr.startswith("Traceback") and "CryptoError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == "Error: worker duty reseal failed (CryptoError)"
