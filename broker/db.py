"""Engine (made after fork), a session per app context, transactions and dialect quirks."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, g
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from broker.config import ConfigError

if TYPE_CHECKING:
    from broker.driver import DriverConnection

T = TypeVar("T")

SQLITE_BEGIN_MODES = {"DEFERRED": "BEGIN DEFERRED", "IMMEDIATE": "BEGIN IMMEDIATE"}
POSTGRES_EXTRA = "pip install 'gmail-token-broker[postgres]'"
# PostgreSQL's SQLSTATEs for a missing table and a missing column: the schema is not there yet.
SCHEMA_MISSING_SQLSTATES = {"42P01", "42703"}


def parse_database_url(url: str) -> URL:
    """Parse the database URL and load its driver; raise ConfigError saying what to fix.

    The messages never repeat the URL: it may carry a password.
    """
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError([
            "BROKER_DATABASE_URL names a database kind this broker does not know; use "
            "postgresql+psycopg://user@host/dbname or sqlite:///path/to/broker.db"
        ]) from None
    except (ArgumentError, ValueError):
        raise ConfigError([
            "BROKER_DATABASE_URL cannot be parsed as a database URL; write it as "
            "postgresql+psycopg://user@host/dbname or sqlite:///path/to/broker.db"
        ]) from None
    try:
        dialect.import_dbapi()
    except ImportError as missing:
        module = f" (no module named {missing.name})" if missing.name else ""
        raise ConfigError([
            f"BROKER_DATABASE_URL needs the {parsed.drivername} driver, which is not installed"
            f"{module}; for PostgreSQL run `{POSTGRES_EXTRA}` and use postgresql+psycopg://"
        ]) from None
    return parsed


def schema_missing(exc: BaseException) -> bool:
    """Say whether a database error means the tables were never created (or are outdated)."""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) in SCHEMA_MISSING_SQLSTATES:
        return True
    reason = str(exc.orig)
    return reason.startswith(("no such table", "no such column"))


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


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    # The hand-out reads timestamps through the bare driver, which renders them in the
    # session's zone: make that UTC, as SQLAlchemy's UTCDateTime returns them.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only when it sat idle longer than `idle_seconds`.

    pool_pre_ping costs a round trip on every checkout; a connection used a moment ago is
    almost always alive, and when it is not (a database restart) the pool invalidates every
    older connection on the first failure and `Database.run` retries once.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("stale pooled connection") from exc  # the pool reconnects


def _create_private_sqlite_file(database: str | None) -> None:
    """Create a new SQLite database file with mode 0600 before SQLite opens it."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    # SQLite gives the -wal and -shm files it makes later the database file's own mode.
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # an existing file keeps its mode; any other problem is SQLite's to report


def make_engine(
    url: str, *, pool_size: int = 20, max_overflow: int = 0, ping_idle: float = 30.0,
    **kwargs: Any,
) -> Engine:
    """Create an engine with the broker's per-dialect settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _create_private_sqlite_file(parsed.database)
        engine = create_engine(url, connect_args={"timeout": 10}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_timeout", 5)
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=ping_idle <= 0,
        **kwargs,
    )
    event.listen(engine, "connect", _utc_session)
    if ping_idle > 0:
        _ping_when_idle(engine, ping_idle)
    return engine


# Attempts at a transaction PostgreSQL failed to break a lock cycle (deadlock_detected).
DEADLOCK_RETRIES = 5


def is_deadlock(exc: BaseException) -> bool:
    """Say whether PostgreSQL failed this transaction to break a lock cycle: run it again."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == "40P01"


def retry_deadlocks(work: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `work`, one whole transaction, again after a short jittered pause each time
    PostgreSQL fails it as a deadlock's victim (its advice for deadlock_detected)."""
    for attempt in range(DEADLOCK_RETRIES - 1):
        try:
            return work()
        except DBAPIError as exc:
            if not is_deadlock(exc):
                raise
        sleep(0.05 * (attempt + 1) * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
    return work()


def is_disconnect(exc: BaseException) -> bool:
    """Say whether an error means the connection died (the pool has already dropped it)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Database:
    """Own one engine per process: a forked worker makes its own on first use."""

    def __init__(
        self, url: str, *, pool_size: int = 20, max_overflow: int = 0, ping_idle: float = 30.0,
    ) -> None:
        self.url = url
        self.pool_size, self.max_overflow, self.ping_idle = pool_size, max_overflow, ping_idle
        # Parsed once, at start-up: transaction() asks on every call, and a bad URL or a
        # missing driver is a configuration problem, not a failure of the first request.
        self.is_sqlite = parse_database_url(url).get_backend_name() == "sqlite"
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._factory: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        """Return this process's engine, creating it after a fork."""
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    if self._engine is not None:
                        self._engine.dispose(close=False)
                    self._engine = make_engine(
                        self.url, pool_size=self.pool_size, max_overflow=self.max_overflow,
                        ping_idle=self.ping_idle,
                    )
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

    def run(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run `work` in one Core transaction and commit; retry once if the connection was dead.

        Only a failure before COMMIT is retried: nothing of the first attempt was kept, so
        `work` must have no effect outside the transaction. A failed COMMIT is not retried.
        """
        for attempt in (1, 2):
            with self.engine.connect() as conn:
                if write and self.is_sqlite:
                    conn.execution_options(sqlite_begin="IMMEDIATE")
                transaction = conn.begin()  # closing the connection rolls back on failure
                try:
                    result = work(conn)
                except DBAPIError as exc:
                    if attempt == 1 and is_disconnect(exc):
                        continue
                    raise
                transaction.commit()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def run_hot(self, work: Callable[[Connection | DriverConnection], T]) -> T:
        """Run the hand-out's statements; on PostgreSQL on the bare driver, in autocommit.

        Each statement commits alone, so `work` may make one write that matters, last, and
        idempotent ones before it. Retried once if the connection was found dead.
        """
        if self.is_sqlite:
            return self.run(work)
        from broker.driver import run_on_driver  # psycopg: only PostgreSQL installs have it

        try:
            return run_on_driver(self.engine, work)
        except DBAPIError as exc:
            if not is_disconnect(exc):
                raise
        return run_on_driver(self.engine, work)

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        self.run(lambda conn: conn.execute(text("SELECT 1")), write=False)

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
    settings = app.config["BROKER"]
    app.extensions["broker.db"] = Database(
        settings.database_url, pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW, ping_idle=settings.DB_PING_IDLE,
    )
    app.teardown_appcontext(_close_session)
