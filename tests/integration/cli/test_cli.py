"""The `broker` command on a fresh instance folder, in a real subprocess."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy import text

from broker import create_app
from broker.cli import cli
from broker.db import get_db
from tests.conftest import _create_postgres_database, _drop_postgres_database
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


def said(stderr: str) -> list[str]:
    """Return what a command wrote on stderr, without its JSON log lines."""
    return [line for line in stderr.splitlines() if not line.startswith('{"ts": ')]


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return tmp_path / "instance"


def test_help_works_with_nothing_configured(instance: Path) -> None:
    result = broker(instance, "--help")
    assert result.returncode == 0
    for command in ("init", "db", "tenant", "user", "keys", "serve"):
        assert command in result.stdout
    assert not instance.exists()


def test_version_is_the_installed_package_version(instance: Path) -> None:
    result = broker(instance, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"broker {version('gmail-token-broker')}\n", ""
    )
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


def test_a_key_file_open_to_others_is_refused_naming_chmod(instance: Path) -> None:
    assert broker(instance, "init").returncode == 0
    (instance / "master.keys").chmod(0o644)
    result = broker(instance, "tenant", "create", "x", "--name", "X", "--admin", "a@x.test")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: {instance / 'master.keys'}: master key file is open to group or others "
        f"(mode 0644); run `chmod 600 {instance / 'master.keys'}`"
    )


def test_init_and_a_write_leave_every_instance_file_private(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    app = create_app(
        {"INSTANCE_PATH": str(instance), "DATABASE_URL": f"sqlite:///{instance}/broker.db"},
        require_keys=False,
    )
    previous = os.umask(0o022)  # a usual login umask: files 0644 unless the broker says not
    try:
        done = app.test_cli_runner().invoke(cli, ["init"])
        assert done.exit_code == 0, done.output
        # A write while the pooled connection stays open, so SQLite's -wal and -shm exist.
        get_db(app).run(lambda conn: conn.execute(text("CREATE TABLE scratch (x INTEGER)")))
        modes = {path.name: path.stat().st_mode & 0o777 for path in instance.iterdir()}
    finally:
        os.umask(previous)
        get_db(app).dispose()
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert {"broker.db", "broker.db-wal", "broker.db-shm", "master.keys"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


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


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    """Make a database with no tables, on the run's kind of database."""
    base = os.environ.get("BROKER_TEST_DATABASE_URL", "")
    if not base.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"broker_empty_{secrets.token_hex(4)}"
    url = _create_postgres_database(base, name)
    try:
        yield url
    finally:
        _drop_postgres_database(base, name)


def test_an_empty_database_says_to_run_db_upgrade(instance: Path, empty_database_url: str) -> None:
    env = {"BROKER_DATABASE_URL": empty_database_url}
    empty = broker(instance, "tenant", "list", env=env)
    assert empty.returncode == 1
    assert len(empty.stderr.strip().splitlines()) == 1
    assert empty.stderr.startswith("Error: the database schema is missing or out of date (")
    assert empty.stderr.strip().endswith("); run `broker db upgrade`")
    assert broker(instance, "db", "upgrade", env=env).returncode == 0
    assert broker(instance, "tenant", "list", env=env).returncode == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql+pg8000://broker:hunter2-pw@127.0.0.1/broker",
            "configuration: BROKER_DATABASE_URL needs the postgresql+pg8000 driver, which is not "
            "installed (no module named pg8000); for PostgreSQL run "
            "`pip install 'gmail-token-broker[postgres]'` and use postgresql+psycopg://",
        ),
        (
            "postgres ql://broker:hunter2-pw@db.internal/broker",
            "configuration: BROKER_DATABASE_URL cannot be parsed as a database URL; write it as "
            "postgresql+psycopg://user@host/dbname or sqlite:///path/to/broker.db",
        ),
        (
            "postgres://broker:hunter2-pw@db.internal/broker",
            "configuration: BROKER_DATABASE_URL names a database kind this broker does not "
            "know; use postgresql+psycopg://user@host/dbname or sqlite:///path/to/broker.db",
        ),
    ],
    ids=["driver-not-installed", "unparseable", "unknown-kind"],
)
def test_a_bad_database_url_says_what_to_do(instance: Path, url: str, says: str) -> None:
    result = broker(instance, "tenant", "list", env={"BROKER_DATABASE_URL": url})
    assert (result.returncode, result.stderr) == (1, f"Error: {says}\n")
    assert "hunter2" not in result.stdout + result.stderr


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
    assert "(1 gthread workers x 8 threads)" in out


def test_worker_once_runs_every_duty(instance: Path) -> None:
    import json

    assert broker(instance, "init").returncode == 0
    result = broker(instance, "worker", "--once")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"refresh_due", "chain_audit", "retry_revocations", "reseal"}
    assert all(count >= 0 for count in report.values())


def test_worker_stops_cleanly_on_sigterm(instance: Path, tmp_path: Path) -> None:
    import signal
    import time

    assert broker(instance, "init").returncode == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    clean["BROKER_INSTANCE_PATH"] = str(instance)
    log = tmp_path / "worker.log"
    with log.open("w") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own entry point
            [sys.executable, "-c", "from broker.cli import main; main()", "worker",
             "--interval", "60"], stdout=subprocess.DEVNULL, stderr=err, env=clean)
        try:
            deadline = time.monotonic() + 120  # a bound on the wait, not what is awaited
            while "worker pass" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            assert "worker pass" in log.read_text()
            proc.send_signal(signal.SIGTERM)  # while it sleeps its 60 s between passes
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, log.read_text()  # ended by its own handler, not killed by the signal
    assert "Traceback" not in log.read_text()


def test_worker_nice_lowers_its_priority_and_its_own_sessions(instance: Path) -> None:
    import time

    assert broker(instance, "init").returncode == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    clean["BROKER_INSTANCE_PATH"] = str(instance)
    proc = subprocess.Popen(  # noqa: S603 - our own entry point
        [sys.executable, "-c", "from broker.cli import main; main()", "worker", "--interval",
         "60", "--nice", "7"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean,
        start_new_session=True)  # as a service manager starts it: a session of its own
    stat = Path(f"/proc/{proc.pid}/stat")
    try:
        deadline = time.monotonic() + 120  # a bound on the wait, not what is awaited
        while _nice(stat) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _nice(stat) == 7
        group = Path(f"/proc/{proc.pid}/autogroup")
        if group.exists():  # kernels with autogroups: the session's group is lowered too
            assert group.read_text().split()[-1] == "7"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    refused = broker(instance, "worker", "--nice", "20")
    assert refused.returncode == 2 and "--nice" in refused.stderr
    assert "Traceback" not in refused.stderr


def _nice(stat: Path) -> int:
    """Return a process's nice value from /proc/PID/stat (after its parenthesised name)."""
    return int(stat.read_text().rpartition(")")[2].split()[16])


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
    # The JSON log lines (the other duties' own events) are the log, not the command's answer.
    assert said(result.stderr) == [
        "Error: worker duty reseal failed (SealError); set BROKER_DEBUG=1 for details"
    ]
    debug = broker(instance, "worker", "--once", env={"BROKER_DEBUG": "1"})
    assert debug.returncode == 1 and json.loads(debug.stdout)["reseal"] == -1
    assert said(debug.stderr)[0] == "Traceback (most recent call last):"
    assert "SealError" in debug.stderr
    assert said(debug.stderr)[-1] == "Error: worker duty reseal failed (SealError)"
