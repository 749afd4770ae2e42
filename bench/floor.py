"""The same-work floor: a bare WSGI hand-out doing one indexed read and one insert with psycopg.

Served by gunicorn exactly as the broker is (`bench.floor:app`), it reads the same rows the
broker's fast path reads (user, policy, connection, access token) and appends the same audit
row, with the raw driver and a small per-process connection pool. It checks nothing and opens
nothing: the distance to it is the broker's own work.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import queue
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg

READ = (
    "SELECT u.*, p.*, c.*, a.*, u.id, a.token, a.expires_at FROM users u"
    " JOIN policies p ON p.tenant_id = u.tenant_id"
    " LEFT JOIN connections c ON c.user_id = u.id"
    " LEFT JOIN access_tokens a ON a.connection_id = c.id"
    " WHERE u.tenant_id = %s AND u.email = %s"
)
INSERT = (
    "INSERT INTO audit_events (id, tenant_id, chain_id, at, actor_type, actor_id, action,"
    " subject_user_id, ip, outcome, reason, scopes, request_id, details)"
    " VALUES (%s, %s, %s, %s, 'client', %s, 'token.handout', %s, %s, 'ok', NULL, %s, %s, %s)"
)
# Idle connections a process keeps: as many as the requests it serves at once in the
# benchmark (16 per worker at 32 clients), not every connection it ever opened, which held
# most of PostgreSQL's 100 slots for the rest of a run (`bench all` then ran out).
KEEP = 16
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Pool:
    """Connections of one process, reused last-in first-out; made again after a fork."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a connection; a broken one is closed instead of returned."""
        if self._pid != os.getpid():
            self._idle, self._pid = queue.LifoQueue(), os.getpid()
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if self._idle.qsize() < KEEP:
            self._idle.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        while not self._idle.empty():
            self._idle.get_nowait().close()


class Floor:
    """The WSGI app: POST /api/v1/token does the database work of a hand-out; GET /healthz."""

    def __init__(self, dsn: str) -> None:
        self.pool = Pool(dsn)
        self._tenants: dict[str, uuid.UUID] = {}
        self._lock = threading.Lock()

    def tenant_of(self, conn: psycopg.Connection[Any], client_id: str) -> uuid.UUID | None:
        """Return the tenant of an API client (loaded once; the broker caches clients too)."""
        if not self._tenants:
            with self._lock:
                rows = conn.execute("SELECT id, tenant_id FROM api_clients").fetchall()
                self._tenants = {str(r[0]): r[1] for r in rows}
        return self._tenants.get(client_id)

    def hand_out(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Read the token row and append the audit row; return (status, body)."""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        client_id = base64.b64decode(auth[6:]).decode().partition(":")[0] if auth else ""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        with self.pool.connection() as conn:
            tenant_id = self.tenant_of(conn, client_id)
            row = conn.execute(READ, (tenant_id, str(body.get("user", "")).lower())).fetchone()
            if row is None:
                return "404 Not Found", {"error": "unknown_user"}
            user_id, token, expires_at = row[-3:]
            now = dt.datetime.now(dt.UTC)
            conn.execute(INSERT, (
                uuid.uuid4(), tenant_id, tenant_id, now, client_id, user_id,
                environ.get("REMOTE_ADDR"), json.dumps(body.get("scopes") or []),
                secrets.token_hex(12), json.dumps({"expires_at": expires_at.isoformat()}),
            ))
        return "200 OK", {
            "access_token": base64.b64encode(token).decode(), "token_type": "Bearer",
            "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires_in": int((expires_at - now).total_seconds()),
            "scopes": body.get("scopes"), "user": {"id": str(user_id), "email": body.get("user")},
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Route the two paths; anything else is a 404."""
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, body = "200 OK", {"status": "ok"}
        elif path == "/api/v1/token" and environ.get("REQUEST_METHOD") == "POST":
            status, body = self.hand_out(environ)
        else:
            status, body = "404 Not Found", {"error": "not_found"}
        data = json.dumps(body).encode()
        start_response(status, [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ])
        return [data]


def dsn_from_env() -> str:
    """Return the libpq URL of BROKER_DATABASE_URL (the same database as the broker's)."""
    url = os.environ["BROKER_DATABASE_URL"]
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class _LazyApp:
    """Build the Floor on the first request, in the worker, after gunicorn forks."""

    def __init__(self) -> None:
        self._app: Floor | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._app is None:
            self._app = Floor(dsn_from_env())
        return self._app(environ, start_response)


app = _LazyApp()
