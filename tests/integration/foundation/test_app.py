"""App factory, probes and start-up checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from flask import Flask

from broker import create_app
from broker.config import ConfigError
from broker.keys.sealed import KeySourceError


def test_healthz_and_readyz(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    # Ready without Google (the API and admin pages serve), and it says Google is not set.
    assert response.status_code == 200
    assert response.json == {"status": "ok", "google": "not_configured"}
    assert response.headers["X-Request-Id"]


def test_readyz_says_when_google_is_configured(make_app) -> None:  # type: ignore[no-untyped-def]
    app: Flask = make_app(GOOGLE_CLIENT_ID="cid.apps.googleusercontent.com",
                          GOOGLE_CLIENT_SECRET="a-client-secret")
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "google": "configured"}


def test_readyz_fails_when_database_is_unreachable(make_app) -> None:  # type: ignore[no-untyped-def]
    app: Flask = make_app(DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "reason": "database_unreachable"}


def test_missing_master_key_stops_start_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.keys"
    with pytest.raises(KeySourceError, match=str(missing)):
        create_app({"MASTER_KEYS_FILE": str(missing), "INSTANCE_PATH": str(tmp_path)})


def test_bad_settings_stop_start_up() -> None:
    with pytest.raises(ConfigError):
        create_app({"REFRESH_BUDGET": "-1"})


SQLITE_ONLY = """
import importlib, pkgutil, sys
sys.modules["psycopg"] = None  # as on an install without the postgres extra
import broker
for module in pkgutil.walk_packages(broker.__path__, "broker."):
    if module.name not in ("broker.driver", "broker.wsgi"):
        importlib.import_module(module.name)
print("imported")
"""


def test_every_module_but_the_bare_driver_imports_without_psycopg() -> None:
    done = subprocess.run([sys.executable, "-c", SQLITE_ONLY], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]
