"""Migrations run up and down on both databases, and match the models exactly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from broker.db import make_engine
from broker.migrate import current, downgrade, upgrade
from broker.models import Base
from tests.conftest import _create_postgres_database, _drop_postgres_database


@pytest.fixture
def scratch_url(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    base = os.environ.get("BROKER_TEST_DATABASE_URL", "")
    if base.startswith("postgresql"):
        name = f"broker_scratch_{secrets.token_hex(4)}"
        yield _create_postgres_database(base, name)
        _drop_postgres_database(base, name)
    else:
        yield f"sqlite:///{tmp_path / 'scratch.db'}"


def test_upgrade_downgrade_upgrade(scratch_url: str) -> None:
    engine = make_engine(scratch_url)
    upgrade(engine)
    assert current(engine) is not None
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    downgrade(engine, "base")
    assert current(engine) is None
    assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
    upgrade(engine)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_agree(scratch_url: str) -> None:
    engine = make_engine(scratch_url)
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []
