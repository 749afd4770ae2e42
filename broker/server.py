"""Run the broker under gunicorn from the CLI (a fresh process, metrics in multiprocess mode)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

UNBUFFERED = (
    "refusing to serve on {host} without a buffering reverse proxy in front: gunicorn's "
    "threads read request headers themselves, so a few slow clients can stall every request. "
    "Put nginx (or another proxy that buffers requests) in front and pass --behind-proxy or "
    "set BROKER_BEHIND_PROXY=on; or bind 127.0.0.1"
)


def is_loopback_host(host: str) -> bool:
    """Say whether a bind address only accepts connections from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def bind_problem(host: str, behind_proxy: bool) -> str | None:
    """Return why `broker serve` must not bind `host`, or None when it may."""
    if is_loopback_host(host) or behind_proxy:
        return None
    return UNBUFFERED.format(host=host)


# Greenlets per gevent worker: proxied Gmail calls wait 100 ms to seconds each, so a box must
# hold hundreds in flight; a waiting greenlet costs a few kilobytes, a thread a stack.
GEVENT_CONNECTIONS = 1000


def has_gevent() -> bool:
    """Say whether gevent is installed (it is a dependency; a trimmed install may lack it)."""
    return importlib.util.find_spec("gevent") is not None


def default_worker_class(sqlite: bool) -> str:
    """Return gevent on PostgreSQL when installed, else gthread (SQLite: one writer anyway)."""
    return "gevent" if not sqlite and has_gevent() else "gthread"


def sensible_workers(
    sqlite: bool, workers: int | None, threads: int | None, worker_class: str = "gthread"
) -> tuple[int, int]:
    """Pick workers and threads (greenlets under gevent): one process on SQLite; else one
    per core under gevent (each runs one thread: no GIL contention), two per core threaded."""
    if sqlite:
        return 1, threads or 8
    cores = os.cpu_count() or 1
    if worker_class == "gevent":
        return workers or max(2, cores), threads or GEVENT_CONNECTIONS
    return workers or max(2, cores * 2), threads or 4


def gunicorn_argv(
    host: str, port: int, workers: int, threads: int, worker_class: str = "gthread"
) -> list[str]:
    """Return the gunicorn command line; the access log format carries no query string.

    Under gevent, `threads` is the greenlets (connections) per worker.
    """
    per_worker = (["--worker-connections", str(threads)] if worker_class == "gevent"
                  else ["--threads", str(threads)])
    return [
        sys.executable, "-m", "gunicorn",
        "--config", "python:broker.gunicorn_conf",
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        *per_worker,
        "--worker-class", worker_class,
        "broker.wsgi:app",
    ]


@dataclass(frozen=True)
class MtlsListener:
    """The second listener: TLS in gunicorn, client certificates asked for, its own port."""

    port: int
    cert: str  # the server chain, leaf first
    key: str


def mtls_argv(
    host: str, listener: MtlsListener, workers: int, threads: int, worker_class: str = "gthread"
) -> list[str]:
    """Return the command line of the mTLS listener (gunicorn_conf.ssl_context does the rest)."""
    argv = gunicorn_argv(host, listener.port, workers, threads, worker_class)
    return [*argv[:-1], "--certfile", listener.cert, "--keyfile", listener.key,
            "--cert-reqs", "1", argv[-1]]  # 1: CERT_OPTIONAL, so Basic still works there


def run_gunicorn_pair(
    host: str, port: int, listener: MtlsListener, workers: int, threads: int,
    worker_class: str = "gthread",
) -> int:
    """Run the plain and the mTLS listener as children; stop both when either stops."""
    metrics_dir = tempfile.mkdtemp(prefix="broker-pair-metrics-")  # gunicorn_conf leaves it
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    sys.stdout.flush()
    children = [
        subprocess.Popen(  # noqa: S603 - our own gunicorn
            gunicorn_argv(host, port, workers, threads, worker_class), env=env),
        subprocess.Popen(  # noqa: S603 - our own gunicorn
            mtls_argv(host, listener, workers, threads, worker_class), env=env),
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        while all(child.poll() is None for child in children):
            try:
                children[0].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        forward(signal.SIGTERM, None)
        return max(child.wait(timeout=30) or 0 for child in children)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run_gunicorn(
    host: str, port: int, workers: int, threads: int, worker_class: str = "gthread"
) -> None:
    """Replace this process with gunicorn, metrics shared through a fresh multiprocess dir."""
    # prometheus-client picks its mode at import: the variable must exist before any import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")
    sys.stdout.flush()
    os.execv(sys.executable, gunicorn_argv(host, port, workers, threads, worker_class))  # noqa: S606 - our own gunicorn
