"""Run the broker under gunicorn from the CLI."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


def sensible_workers(sqlite: bool, workers: int | None, threads: int | None) -> tuple[int, int]:
    """Pick workers and threads: one process on SQLite, else two per core."""
    if sqlite:
        return 1, threads or 8
    return workers or max(2, (os.cpu_count() or 1) * 2), threads or 4


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from broker import create_app

        return create_app()


def run_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    """Serve with gunicorn; the access log format carries no query string."""
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "accesslog": "-",
            "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss',
            "graceful_timeout": 10,
            "timeout": 60,
        }
    ).run()
