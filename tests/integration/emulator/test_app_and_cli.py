"""The app factory, the --state and --config files, the server helper and the command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from broker.emulator import _template_folder, create_app, routes
from broker.emulator.cli import emulator_command
from broker.emulator.server import serve_in_thread
from tests.ports import free_port

SEED = {
    "clients": [
        {"client_id": "seeded", "client_secret": "sec", "redirect_uris": ["http://127.0.0.1:9/cb"]}
    ],
    "accounts": [{"email": "alice@acme.test", "name": "Alice", "hd": "acme.test", "sub": "1001"}],
}


def test_templates_come_from_the_checkout() -> None:
    folder = Path(_template_folder())
    assert (folder / "emulator" / "consent.html").is_file()
    assert folder == Path(__file__).resolve().parents[3] / "templates"


def test_the_emulator_cannot_be_mounted_in_another_app() -> None:
    with pytest.raises(RuntimeError, match="its own app"):
        Flask("not-the-emulator").register_blueprint(routes.bp)


def test_its_session_cookie_has_its_own_name() -> None:
    app = create_app(SEED, testing=True)
    assert app.config["SESSION_COOKIE_NAME"].startswith("emulator_")
    page = app.test_client().get(
        "/o/oauth2/v2/auth?client_id=seeded&redirect_uri=http://127.0.0.1:9/cb"
        "&response_type=code&scope=openid"
    )
    assert page.status_code == 200
    assert page.headers["Set-Cookie"].startswith("emulator_session=")


def test_config_seeds_clients_and_accounts() -> None:
    client = create_app(SEED, testing=True).test_client()
    accounts = client.get("/_emulator/accounts").get_json()["accounts"]
    assert [(a["email"], a["sub"], a["hd"]) for a in accounts] == [
        ("alice@acme.test", "1001", "acme.test")
    ]
    grant = client.post(
        "/_emulator/grants",
        json={"email": "alice@acme.test", "client_id": "seeded", "scopes": ["email"]},
    )
    assert grant.status_code == 200


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "emulator.json"
    first = create_app(SEED, state_file=str(path), testing=True).test_client()
    first.post("/_emulator/settings", json={"access_token_lifetime": 600})
    grant = first.post(
        "/_emulator/grants",
        json={"email": "alice@acme.test", "client_id": "seeded", "scopes": ["openid", "email"]},
    ).get_json()
    first.post("/_emulator/faults", json={"endpoint": "token", "status": 500, "count": -1})
    first.get("/oauth2/v3/certs")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    second = create_app(state_file=str(path), testing=True).test_client()
    assert second.get("/_emulator/calls").get_json()["certs"] == 0
    assert second.get("/_emulator/faults").get_json() == {"faults": []}
    refreshed = second.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": grant["refresh_token"],
            "client_id": "seeded",
            "client_secret": "sec",
        },
    )
    assert refreshed.status_code == 200 and refreshed.get_json()["expires_in"] == 600
    info = second.get("/tokeninfo", query_string={"access_token": grant["access_token"]})
    assert info.status_code == 200
    assert second.get("/tokeninfo", query_string={"id_token": grant["id_token"]}).status_code == 200
    saved = json.loads(path.read_text())
    assert "faults" not in saved and "calls" not in saved


def test_stopping_the_server_releases_hanging_calls() -> None:
    app = create_app(testing=True)
    url, stop = serve_in_thread(app)
    requests.post(f"{url}/_emulator/faults", json={"endpoint": "certs", "mode": "hang"}, timeout=10)
    errors: list[Exception] = []

    def call() -> None:
        try:
            requests.get(f"{url}/oauth2/v3/certs", timeout=30)
        except requests.RequestException as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while requests.get(f"{url}/_emulator/calls", timeout=10).json()["certs"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stop()
    caller.join(timeout=5)
    assert not caller.is_alive() and errors


def test_cli_help() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--config", "--state"):
        assert option in result.output


def _launch(port: int, *args: str) -> subprocess.Popen[str]:
    """Start `broker emulator` from this checkout on a port, its output piped."""
    script = "from broker.emulator.cli import emulator_command; emulator_command()"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.Popen(
        [sys.executable, "-u", "-c", script, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_command_serves_a_discovery_document_whose_endpoints_answer(tmp_path: Path) -> None:
    config = tmp_path / "emulator-config.json"
    config.write_text(json.dumps(SEED))
    port = free_port()
    process = _launch(port, "--config", str(config), "--state", str(tmp_path / "state.json"))
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline()]
        while "controls" not in banner[-1]:  # the banner's last line
            assert banner[-1], banner  # not at the end of the output
            banner.append(process.stdout.readline())
        assert "NOT Google" in banner[0]
        printed = dict(line.split(None, 2)[:2] for line in banner[1:])
        # What it prints answers, under the name the README gives the broker: the issuer.
        local = f"http://localhost:{port}"
        assert printed == {
            "issuer": local,
            "discovery": f"{local}/.well-known/openid-configuration",
            "controls": f"{local}/_emulator/",
        }
        assert requests.get(printed["discovery"], timeout=10).json()["issuer"] == local
        controls = requests.get(printed["controls"], timeout=10)
        assert controls.status_code == 200
        assert "POST /_emulator/grants" in controls.json()["controls"]
        base = f"http://127.0.0.1:{port}"
        document = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
        assert document["issuer"] == base
        expected = {
            "authorization_endpoint": 400,
            "token_endpoint": 405,
            "revocation_endpoint": 405,
            "userinfo_endpoint": 401,
            "jwks_uri": 200,
        }
        for key, status in expected.items():
            assert requests.get(document[key], timeout=10).status_code == status, key
        accounts = requests.get(f"{base}/_emulator/accounts", timeout=10).json()["accounts"]
        assert [a["email"] for a in accounts] == ["alice@acme.test"]
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert json.loads((tmp_path / "state.json").read_text())["clients"][0]["client_id"] == "seeded"


def test_tls_serves_https_under_a_root_it_prints(tmp_path: Path) -> None:
    port = free_port()
    process = _launch(port, "--tls", "--state", str(tmp_path / "state.json"))
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline()]
        while "root CA" not in banner[-1]:  # printed after the usual banner
            assert banner[-1], banner
            banner.append(process.stdout.readline())
        root = tmp_path / "emulator-root.pem"
        assert str(root) in banner[-1] and f"issuer     https://localhost:{port}" in banner[1]
        document = requests.get(f"https://localhost:{port}/.well-known/openid-configuration",
                                verify=str(root), timeout=10).json()
        assert document["issuer"] == f"https://localhost:{port}"
        with pytest.raises(requests.exceptions.SSLError):  # not trusted without the root
            requests.get(f"https://127.0.0.1:{port}/.well-known/openid-configuration",
                         timeout=10)
        assert oct((tmp_path / "emulator-key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        process.terminate()
        process.communicate(timeout=10)
