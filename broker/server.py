"""Run the broker under gunicorn from the CLI (a fresh process, metrics in multiprocess mode)."""

from __future__ import annotations

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


def sensible_workers(sqlite: bool, workers: int | None, threads: int | None) -> tuple[int, int]:
    """Pick workers and threads: one process on SQLite, else two per core."""
    if sqlite:
        return 1, threads or 8
    return workers or max(2, (os.cpu_count() or 1) * 2), threads or 4


def gunicorn_argv(host: str, port: int, workers: int, threads: int) -> list[str]:
    """Return the gunicorn command line; the access log format carries no query string."""
    return [
        sys.executable, "-m", "gunicorn",
        "--config", "python:broker.gunicorn_conf",
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        "--threads", str(threads),
        "--worker-class", "gthread",
        "broker.wsgi:app",
    ]


@dataclass(frozen=True)
class MtlsListener:
    """The second listener: TLS in gunicorn, client certificates asked for, its own port."""

    port: int
    cert: str  # the server chain, leaf first
    key: str


def mtls_argv(host: str, listener: MtlsListener, workers: int, threads: int) -> list[str]:
    """Return the command line of the mTLS listener (gunicorn_conf.ssl_context does the rest)."""
    argv = gunicorn_argv(host, listener.port, workers, threads)
    return [*argv[:-1], "--certfile", listener.cert, "--keyfile", listener.key,
            "--cert-reqs", "1", argv[-1]]  # 1: CERT_OPTIONAL, so Basic still works there


def run_gunicorn_pair(
    host: str, port: int, listener: MtlsListener, workers: int, threads: int
) -> int:
    """Run the plain and the mTLS listener as children; stop both when either stops."""
    metrics_dir = tempfile.mkdtemp(prefix="broker-pair-metrics-")  # gunicorn_conf leaves it
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    sys.stdout.flush()
    children = [
        subprocess.Popen(gunicorn_argv(host, port, workers, threads), env=env),  # noqa: S603
        subprocess.Popen(mtls_argv(host, listener, workers, threads), env=env),  # noqa: S603
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


def run_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    """Replace this process with gunicorn, metrics shared through a fresh multiprocess dir."""
    # prometheus-client picks its mode at import: the variable must exist before any import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")
    sys.stdout.flush()
    os.execv(sys.executable, gunicorn_argv(host, port, workers, threads))  # noqa: S606 - our own gunicorn
