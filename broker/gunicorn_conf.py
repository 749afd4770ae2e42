"""gunicorn settings for `broker serve`: quiet access log, metrics cleanup per worker."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
import time
from typing import Any

accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'  # %(U)s: path, no query string
graceful_timeout = 10
timeout = 60
# Seconds an idle connection is kept (gunicorn's default 2 s also bounds the wait for a new
# connection's first request under gevent): load balancers and pooled clients open early.
keepalive = 5


# A greenlet whose client has sent its next request on a kept-alive connection reads it
# without ever blocking, so it serves that client again and again while the others wait:
# wrk at 32 connections saw a median of 1 ms and a p90 of 2 s on /healthz under gevent.
# Yielding before each request, until the event loop's next turn, serves them in turn.
TURN = 1e-6


def pre_request(worker: Any, _req: Any) -> None:
    """Under gevent, let every other ready connection have its turn before this request."""
    if worker.cfg.worker_class_str == "gevent":
        from gevent import sleep  # type: ignore[import-untyped]

        sleep(TURN)  # above 0: only the loop's next turn resumes us, after pending I/O


def child_exit(_server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the shared metrics directory."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(_server: Any) -> None:
    """Remove the metrics directory this run created."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(path).startswith("broker-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


# --- The mTLS listener (`broker serve --mtls-port`) ------------------------------------------

# How often a worker re-reads the client CAs and pinned certificates of every tenant.
CLIENT_CA_REFRESH = 30.0
_tls: dict[str, Any] = {"context": None, "checked": 0.0, "seen": set(), "db": None}
log = logging.getLogger("broker.mtls")


def ssl_context(_conf: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """TLS 1.3 only; client certificates asked for and chained to a CA some tenant registered.

    gunicorn asks for a context per connection: one is built per worker and kept, and the
    client CAs are re-read from the database at most every CLIENT_CA_REFRESH seconds, so a CA
    registered after start is trusted without a restart. Which client a certificate proves is
    decided by the broker against that client's own CA, not here.
    """
    # Made in the worker on first use, never in the arbiter at import: under gevent a lock from
    # before the monkey-patching would block the whole worker while a greenlet reads the CAs.
    with _tls.setdefault("lock", threading.Lock()):
        context: ssl.SSLContext | None = _tls["context"]
        if context is None:
            context = default_ssl_context_factory()
            context.minimum_version = ssl.TLSVersion.TLSv1_3  # certificates never in clear
            context.verify_mode = ssl.CERT_OPTIONAL
            _tls["context"] = context
        if time.monotonic() - _tls["checked"] >= CLIENT_CA_REFRESH:
            _tls["checked"] = time.monotonic()
            _trust_client_cas(context)
    return context


def _trust_client_cas(context: ssl.SSLContext) -> None:
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from broker.config import load_settings
    from broker.db import Database
    from broker.models import ApiClient, ClientCA

    try:
        if _tls["db"] is None:
            _tls["db"] = Database(load_settings().database_url, pool_size=1, max_overflow=1)
        with _tls["db"].transaction(write=False) as session:
            pems = list(session.scalars(select(ClientCA.pem)))
            for certificates in session.scalars(
                select(ApiClient.tls_certificates)
                .where(ApiClient.auth_method == "self_signed_tls_client_auth")
            ):
                pems.extend(certificates or ())
    except (SQLAlchemyError, ValueError) as exc:
        log.warning("client CAs not re-read (%s)", type(exc).__name__)
        return
    for pem in pems:
        if pem not in _tls["seen"]:
            try:
                context.load_verify_locations(cadata=pem)
            except ssl.SSLError:
                continue
            _tls["seen"].add(pem)
