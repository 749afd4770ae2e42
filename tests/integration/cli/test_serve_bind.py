"""`broker serve` refuses to face slow clients directly (issue 11, item 6)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.cli.test_cli import broker
from tests.ports import free_port


def test_serve_refuses_a_public_address_without_a_buffering_proxy(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert broker(instance, "init").returncode == 0
    port = free_port()
    # A TEST-NET address no interface holds: should the guard ever fail, nothing is exposed.
    result = broker(instance, "serve", "--host", "192.0.2.1", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "buffering reverse proxy" in lines[0]
    assert "--behind-proxy" in lines[0] and "BROKER_BEHIND_PROXY" in lines[0]
    assert "192.0.2.1" in lines[0]
    with socket.socket() as probe:  # nothing was started on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_malformed_declaration_is_a_configuration_error(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    result = broker(instance, "serve", "--host", "192.0.2.1", env={"BROKER_BEHIND_PROXY": "maybe"})
    assert result.returncode == 1
    assert "BROKER_BEHIND_PROXY" in result.stderr and "Traceback" not in result.stderr
