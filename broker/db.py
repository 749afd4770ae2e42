"""Engine (made after fork), a session per app context, transactions and dialect quirks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BEGIN_MODES = {"DEFERRED": "BEGIN DEFERRED", "IMMEDIATE": "BEGIN IMMEDIATE"}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself, so write transactions can be IMMEDIATE
    # and never hit SQLITE_BUSY on a read-to-write lock upgrade.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(SQLITE_BEGIN_MODES[mode])


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the broker's per-dialect settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 10}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_timeout", 5)
    return create_engine(url, **kwargs)


class Database:
    """Own one engine per process: a forked worker makes its own on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._factory: sessionmaker[Session] | None = None

    @property
    def is_sqlite(self) -> bool:
        """Say whether the database is SQLite."""
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        """Return this process's engine, creating it after a fork."""
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    if self._engine is not None:
                        self._engine.dispose(close=False)
                    self._engine = make_engine(self.url)
                    self._factory = sessionmaker(self._engine, expire_on_commit=False)
                    self._pid = os.getpid()
        return self._engine

    def session(self) -> Session:
        """Return a new session bound to this process's engine."""
        self.engine  # noqa: B018 - creates the factory after a fork
        assert self._factory is not None  # noqa: S101 - set by the engine property
        return self._factory()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """Run a short transaction in its own session; SQLite write ones begin IMMEDIATE."""
        session = self.session()
        try:
            with session.begin():
                if write and self.is_sqlite:
                    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
                yield session
        finally:
            session.close()

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            self._engine.dispose()


def get_db(app: Flask | None = None) -> Database:
    """Return the app's Database."""
    app = app or current_app
    return app.extensions["broker.db"]  # type: ignore[no-any-return]


def session() -> Session:
    """Return the session of the current app context, made on first use."""
    if "db_session" not in g:
        g.db_session = get_db().session()
    return g.db_session  # type: ignore[no-any-return]


def _close_session(_exc: BaseException | None) -> None:
    current = g.pop("db_session", None)
    if current is not None:
        current.close()


def init_app(app: Flask) -> None:
    """Attach the Database to the app and close the context session at teardown."""
    app.extensions["broker.db"] = Database(app.config["BROKER"].database_url)
    app.teardown_appcontext(_close_session)
