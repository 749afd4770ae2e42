"""Run the broker under gunicorn from the CLI (a fresh process, metrics in multiprocess mode)."""

from __future__ import annotations

import os
import sys
import tempfile


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


def run_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    """Replace this process with gunicorn, metrics shared through a fresh multiprocess dir."""
    # prometheus-client picks its mode at import: the variable must exist before any import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")
    sys.stdout.flush()
    os.execv(sys.executable, gunicorn_argv(host, port, workers, threads))  # noqa: S606 - our own gunicorn
