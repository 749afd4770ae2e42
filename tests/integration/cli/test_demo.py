"""`broker demo`: one command serves the emulator, the broker and its worker; a rerun reuses all."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from broker.models import WORKER_HEARTBEAT
from tests.ports import free_port


def start_demo(instance: Path, attempts: int = 5) -> tuple[subprocess.Popen[str], int, int, str]:
    """Start `broker demo` on free ports; return it, its ports and its banner (to Ctrl-C).

    A port found free can be taken by a parallel test before the demo binds it: then the
    demo says so and exits, and it is started again on other ports.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_INSTANCE_PATH"] = str(instance)
    errors = instance.parent / "demo-stderr.log"
    for _ in range(attempts):
        port, eport = free_port(), free_port()
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-c", "from broker.cli import main; main()", "demo", "--port",
                 str(port), "--emulator-port", str(eport)],
                env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )
        assert process.stdout is not None
        printed, deadline = "", time.monotonic() + 60
        while "Ctrl-C" not in printed and process.poll() is None:
            assert time.monotonic() < deadline, printed
            printed += process.stdout.readline()
        if "Ctrl-C" in printed:
            return process, port, eport, printed
        process.communicate()  # exited: close its pipe before deciding
        if "in use" not in errors.read_text():
            raise AssertionError(f"broker demo exited {process.returncode}: "
                                 f"{errors.read_text()[-2000:]}")
    raise AssertionError(f"no free ports for broker demo in {attempts} attempts")


def _run_once(instance: Path) -> str:
    process, port, eport, printed = start_demo(instance)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        discovery = httpx.get(f"http://localhost:{eport}/.well-known/openid-configuration")
        assert discovery.json()["issuer"] == f"http://localhost:{eport}"
        clients = httpx.get(f"http://127.0.0.1:{eport}/_emulator/accounts").json()
        emails = {a["email"] for a in clients["accounts"]}
        assert {"admin@demo.test", "alice@demo.test"} <= emails
    finally:
        process.send_signal(signal.SIGINT)  # one Ctrl-C stops both
        rest, _ = process.communicate(timeout=20)
    out = printed + rest
    assert process.returncode == 0
    assert "stopping the broker, the worker and the emulator" in out
    # The worker ran inside the demo: its heartbeat is in the demo's database.
    with sqlite3.connect(instance / "broker.db") as db:
        beat = db.execute("SELECT value FROM worker_state WHERE name = ?",
                          (WORKER_HEARTBEAT,)).fetchone()
    assert beat is not None and float(beat[0]) > 0
    curl = re.search(r"^curl .*$", out, re.MULTILINE)
    assert curl is not None
    return re.sub(r"127\.0\.0\.1:\d+", "HOST", curl.group(0))


def test_demo_serves_both_and_rerun_reuses_everything(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    first = _run_once(instance)
    assert (instance / "demo.json").stat().st_mode & 0o777 == 0o600
    assert (instance / "emulator.json").exists()
    assert _run_once(instance) == first
