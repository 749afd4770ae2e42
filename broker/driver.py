"""The hand-out's statements run on psycopg directly, compiled once from SQLAlchemy Core.

On a busy broker most requests are one read and one insert; SQLAlchemy's per-execution work
(execution context, result metadata, type processors, the isolation switch for autocommit)
costs about as much CPU as the driver itself. `DriverConnection` keeps the statements as Core
objects, compiles each once for PostgreSQL and runs it on the pooled psycopg connection in
autocommit mode. Errors are raised as SQLAlchemy's, so callers handle one family.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from psycopg import Connection as PGConnection
from psycopg import Error as PGError
from psycopg.types.json import Json
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import JSON

T = TypeVar("T")


@dataclass(frozen=True)
class _Compiled:
    sql: str
    json_params: frozenset[str]  # parameters bound to JSON columns: psycopg wants them wrapped
    row: Callable[[Sequence[Any]], Any] | None  # makes a named tuple of a selected row


_cache: dict[ClauseElement, _Compiled] = {}
_cache_lock = threading.Lock()


class DriverResult:
    """The rows of one statement, read like SQLAlchemy's Result."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self.rows = rows

    def all(self) -> Sequence[Any]:
        """Return every row (named tuples: attribute access by column label)."""
        return self.rows


class DriverConnection:
    """One pooled psycopg connection in autocommit mode, executing compiled Core statements."""

    def __init__(self, engine: Engine, connection: PGConnection[Any]) -> None:
        self.engine = engine
        self.connection = connection
        self.cursor = connection.cursor()  # one for all the work's statements

    def execute(self, statement: ClauseElement, parameters: Mapping[str, Any]) -> DriverResult:
        """Execute a Core statement with named parameters; return its rows, if any."""
        compiled = self._compiled(statement, parameters)
        params = {k: Json(v) if k in compiled.json_params else v for k, v in parameters.items()}
        try:
            self.cursor.execute(compiled.sql, params, prepare=True)
            rows = self.cursor.fetchall() if compiled.row is not None else []
        except PGError as exc:
            raise _as_sqlalchemy(self.engine, exc, compiled.sql, self.connection) from exc
        make = compiled.row
        return DriverResult([make(r) for r in rows] if make is not None else rows)

    def _compiled(self, statement: ClauseElement, parameters: Mapping[str, Any]) -> _Compiled:
        found = _cache.get(statement)
        if found is None:
            compiled = cast(SQLCompiler, statement.compile(dialect=self.engine.dialect))
            missing = set(compiled.binds) - set(parameters)
            if missing:  # a Python-side default or onupdate, which only SQLAlchemy applies
                raise ValueError(f"no value for {', '.join(sorted(missing))} in {statement}")
            json_params = frozenset(
                name for name, bind in compiled.binds.items() if isinstance(bind.type, JSON))
            # Named once per statement: psycopg's namedtuple_row would rebuild it per execution.
            selected = getattr(statement, "selected_columns", None)
            if selected is None and isinstance(statement, UpdateBase) and statement._returning:
                selected = statement.exported_columns  # INSERT/UPDATE ... RETURNING
            row = _row_maker(list(selected.keys())) if selected is not None else None
            found = _Compiled(str(compiled), json_params, row)
            with _cache_lock:
                _cache[statement] = found
        return found


def _as_sqlalchemy(
    engine: Engine, exc: PGError, sql: str | None, connection: PGConnection[Any] | None
) -> StatementError:
    """Return psycopg's error as SQLAlchemy would raise it, saying if the connection died."""
    dialect: Any = engine.dialect  # typed for the DB-API module, not psycopg's own
    invalidated = bool(dialect.is_disconnect(exc, connection, None))
    return DBAPIError.instance(sql, None, exc, PGError, connection_invalidated=invalidated)


def _row_maker(labels: list[str]) -> Callable[[Sequence[Any]], Any]:
    """Return a maker of named tuples with these field names."""
    make_class: Any = namedtuple  # field names known only at run time, which mypy cannot check
    return make_class("Row", labels)._make  # type: ignore[no-any-return]


def run_on_driver(engine: Engine, work: Callable[[DriverConnection], T]) -> T:
    """Run `work` on a pooled connection in autocommit mode; drop the connection on failure."""
    try:
        pooled = engine.raw_connection()
    except PGError as exc:  # the pool passes the driver's own error through
        raise _as_sqlalchemy(engine, exc, None, None) from exc
    connection: PGConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        connection.autocommit = True  # no round trip while idle: psycopg only sets a flag
        driver = DriverConnection(engine, connection)
        try:
            result = work(driver)
        finally:
            driver.cursor.close()
        connection.autocommit = False  # as SQLAlchemy expects of a pooled connection
        return result
    except PGError as exc:
        # Raised outside `execute` (a psycopg transaction's BEGIN or COMMIT on a connection
        # the database dropped): the same SQLAlchemy family, so callers answer 503, not 500.
        pooled.invalidate(exc)
        raise _as_sqlalchemy(engine, exc, None, connection) from exc
    except BaseException as exc:
        # A failure may leave the connection in any state: never hand it back to the pool.
        pooled.invalidate(exc if isinstance(exc, Exception) else None)
        raise
    finally:
        pooled.close()
