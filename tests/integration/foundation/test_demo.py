"""`broker demo`: one command serves the emulator and the broker, and a rerun reuses all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(instance: Path, port: int, eport: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_INSTANCE_PATH"] = str(instance)
    return subprocess.Popen(
        [sys.executable, "-c", "from broker.cli import main; main()", "demo", "--port",
         str(port), "--emulator-port", str(eport)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait(url: str, process: subprocess.Popen[str]) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)


def _run_once(instance: Path) -> str:
    port, eport = _free_port(), _free_port()
    process = _start(instance, port, eport)
    try:
        assert _wait(f"http://127.0.0.1:{port}/readyz", process).status_code == 200
        discovery = httpx.get(f"http://localhost:{eport}/.well-known/openid-configuration")
        assert discovery.json()["issuer"] == f"http://localhost:{eport}"
        clients = httpx.get(f"http://127.0.0.1:{eport}/_emulator/accounts").json()
        emails = {a["email"] for a in clients["accounts"]}
        assert {"admin@demo.test", "alice@demo.test"} <= emails
    finally:
        process.send_signal(signal.SIGINT)  # one Ctrl-C stops both
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "stopping the broker and the emulator" in out
    curl = re.search(r"^curl .*$", out, re.MULTILINE)
    assert curl is not None
    return re.sub(r"127\.0\.0\.1:\d+", "HOST", curl.group(0))


def test_demo_serves_both_and_rerun_reuses_everything(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    first = _run_once(instance)
    assert (instance / "demo.json").stat().st_mode & 0o777 == 0o600
    assert (instance / "emulator.json").exists()
    assert _run_once(instance) == first
