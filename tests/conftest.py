"""Shared fixtures: a database per run (SQLite or PostgreSQL), the app, its CLI, a clock."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker import create_app
from broker.db import Database, get_db, make_engine
from broker.keys.sealed import format_key_line, new_key
from broker.migrate import upgrade
from broker.models import Base

pytest_plugins = ["tests.plugins.emulator", "tests.plugins.world", "tests.plugins.keyservices",
                  "tests.plugins.risc"]

MASTER_KEYS = ",".join(format_key_line(f"test-{i}", new_key()) for i in (1, 2))
# Folders of long tests (the reliability batteries, the CLI's subprocesses), run first: at the
# end of the collection, xdist left one worker alone with a minute-long test while the other
# sat idle (`pytest --durations`: the cluster 70 s, schemathesis 65 s, the CLI's 30 s ones).
LONG_FIRST = ("tests/reliability/", "tests/integration/cli/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order long folders first, keeping each part's own order (nothing depends on order)."""
    def rank(item: pytest.Item) -> int:
        path = item.nodeid
        return next((i for i, folder in enumerate(LONG_FIRST) if path.startswith(folder)),
                    len(LONG_FIRST))
    items.sort(key=rank)


def _create_postgres_database(base_url: str, name: str) -> str:
    admin = make_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=None)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(base_url: str, name: str) -> None:
    admin = make_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Make this run's own database (BROKER_TEST_DATABASE_URL picks PostgreSQL) and migrate it."""
    base = os.environ.get("BROKER_TEST_DATABASE_URL", "")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if base.startswith("postgresql"):
        name = f"broker_test_{worker}_{secrets.token_hex(4)}"
        url = _create_postgres_database(base, name)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'broker.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    if base.startswith("postgresql"):
        _drop_postgres_database(base, name)


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    """Say whether this run is on PostgreSQL."""
    return database_url.startswith("postgresql")


@pytest.fixture
def postgres_only(is_postgres: bool) -> None:
    """Skip a heavy battery unless the run is on PostgreSQL."""
    if not is_postgres:
        pytest.skip("runs on PostgreSQL only")


def _wipe(url: str) -> None:
    database = Database(url)
    with database.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    database.dispose()


@pytest.fixture
def make_app(
    database_url: str, tmp_path: Path
) -> Iterator[Callable[..., Flask]]:
    """Build apps on this run's database; rows are wiped after the test."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        config: dict[str, Any] = {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "MASTER_KEYS": MASTER_KEYS,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-secret-key",
            "SEAL_BLOCK": 10,
        }
        config.update(overrides)
        app = create_app(config)
        apps.append(app)
        return app

    yield factory
    if apps:
        _wipe(database_url)
    for app in apps:
        get_db(app).dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The broker app on this run's database."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner bound to the app."""
    return app.test_cli_runner()


class Clock:
    """A settable UTC clock for code that takes `now`."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        """Move the clock forward."""
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock tests move instead of sleeping."""
    return Clock()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Return unique names for rows a test creates."""
    return lambda prefix: f"{prefix}{uuid.uuid4().hex[:8]}"
