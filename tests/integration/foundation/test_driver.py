"""The hand-out's bare-driver path on PostgreSQL: same rows and types as Core, autocommit that
never leaks into the pool, SQLAlchemy's errors, a dead connection dropped and retried."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from broker import audit
from broker.db import Database, get_db
from broker.driver import DriverConnection, run_on_driver
from broker.errors import database_down
from broker.models import AuditEvent, Connection, Tenant
from tests.factories import make_tenant

BY_SLUG = select(Tenant.id, Tenant.slug, Tenant.created_at).where(Tenant.slug == bindparam("s"))


@pytest.fixture
def db(make_app: Callable[..., Flask], postgres_only: None) -> Database:
    return get_db(make_app())


@pytest.fixture
def tenant(make_app: Callable[..., Flask], db: Database) -> Tenant:
    return make_tenant(make_app())


def _pid(conn: DriverConnection) -> int:
    return int(conn.connection.info.backend_pid)


def test_rows_carry_the_statement_labels_and_utc_times(db: Database, tenant: Tenant) -> None:
    rows = run_on_driver(db.engine, lambda conn: conn.execute(BY_SLUG, {"s": tenant.slug}).all())
    assert [(r.id, r.slug) for r in rows] == [(tenant.id, tenant.slug)]
    assert rows[0].created_at.utcoffset() == dt.timedelta(0)
    assert rows[0].created_at == tenant.created_at


def test_json_columns_are_written_as_json(db: Database, tenant: Tenant) -> None:
    def work(conn: DriverConnection) -> None:
        audit.insert_event(conn, action="test.json", tenant_id=tenant.id, actor_type="system",
                           scopes=["b", "a"], details={"nested": {"n": 1}})

    run_on_driver(db.engine, work)
    with db.transaction(write=False) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "test.json")).one()
    assert event.scopes == ["a", "b"] and event.details == {"nested": {"n": 1}}


def test_each_statement_commits_and_the_pool_gets_a_transactional_connection(
    db: Database, tenant: Tenant,
) -> None:
    def work(conn: DriverConnection) -> bool:
        conn.execute(update(Tenant).where(Tenant.id == bindparam("t"))
                     .values(name=bindparam("n")), {"t": tenant.id, "n": "Renamed"})
        return bool(conn.connection.autocommit)

    assert run_on_driver(db.engine, work) is True
    with db.transaction(write=False) as session:
        assert session.get(Tenant, tenant.id).name == "Renamed"  # type: ignore[union-attr]
    pooled = db.engine.raw_connection()
    try:
        assert pooled.driver_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        pooled.close()


def test_a_statement_needing_a_python_default_is_refused_by_name(db: Database) -> None:
    touch = update(Connection).where(Connection.id == bindparam("c")).values(last_used_at=None)
    with pytest.raises(ValueError, match="updated_at"):
        run_on_driver(db.engine, lambda conn: conn.execute(touch, {"c": uuid.uuid4()}))
    with pytest.raises(ValueError, match="chain_seq"):  # a bare INSERT names every column
        run_on_driver(db.engine, lambda conn: conn.execute(insert(AuditEvent), {}))


def test_errors_are_sqlalchemy_errors_and_the_connection_is_dropped(
    db: Database, tenant: Tenant,
) -> None:
    row = audit.event_values({"action": "test.dup", "tenant_id": tenant.id,
                              "actor_type": "system"})
    pids: list[int] = []

    def twice(conn: DriverConnection) -> None:
        pids.append(_pid(conn))
        conn.execute(audit.INSERT, row)
        conn.execute(audit.INSERT, row)

    with pytest.raises(IntegrityError):
        run_on_driver(db.engine, twice)
    after = run_on_driver(db.engine, _pid)
    assert after != pids[0]  # the failed connection never went back to the pool
    with db.transaction(write=False) as session:  # the first insert had committed alone
        assert session.get(AuditEvent, row["id"]) is not None


def test_a_connection_killed_in_the_pool_is_replaced_and_the_work_retried(
    db: Database, tenant: Tenant,
) -> None:
    first = run_on_driver(db.engine, _pid)
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as other:  # not from the pool: that holds `first`
        other.execute("SELECT pg_terminate_backend(%s)", (first,))
    seen: list[int] = []

    def work(conn: DriverConnection | Any) -> list[Any]:
        seen.append(_pid(conn))
        return list(conn.execute(BY_SLUG, {"s": tenant.slug}).all())

    rows = db.run_hot(work)
    assert [r.slug for r in rows] == [tenant.slug]
    assert seen[0] == first and len(seen) == 2 and seen[1] != first  # failed once, then retried


def test_a_dead_connection_in_the_work_s_own_transaction_is_a_sqlalchemy_error(
    db: Database, tenant: Tenant,
) -> None:
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    pids: list[int] = []

    def store(conn: DriverConnection) -> None:
        pids.append(_pid(conn))
        with psycopg.connect(dsn, autocommit=True) as other:  # the database drops this one
            other.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        with conn.connection.transaction():  # BEGIN on the dead connection, outside execute
            conn.execute(BY_SLUG, {"s": tenant.slug})

    with pytest.raises(OperationalError) as raised:
        run_on_driver(db.engine, store)
    assert raised.value.connection_invalidated  # what database_down answers 503 for
    assert database_down(raised.value)
    assert run_on_driver(db.engine, _pid) != pids[0]  # never handed back to the pool
