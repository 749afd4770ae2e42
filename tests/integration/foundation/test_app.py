"""App factory, probes and start-up checks."""

from __future__ import annotations

import pytest
from flask import Flask

from broker import create_app
from broker.config import ConfigError
from broker.crypto import KeySourceError


def test_healthz_and_readyz(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json == {"status": "ok"}
    assert response.headers["X-Request-Id"]


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
