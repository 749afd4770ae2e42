"""Serve the broker in real worker processes (gunicorn) for multi-process tests.

Run as `python -m tests.integration.tokens.serve PORT WORKERS THREADS`; settings come from the
BROKER_* environment like in production.
"""

from __future__ import annotations

import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from broker import create_app

        return create_app()


def main() -> None:
    """Serve on 127.0.0.1:PORT with WORKERS processes of THREADS threads."""
    port, workers, threads = (int(a) for a in sys.argv[1:4])
    _Server({
        "bind": f"127.0.0.1:{port}", "workers": workers, "threads": threads,
        "worker_class": "gthread", "graceful_timeout": 2, "timeout": 60, "backlog": 512,
        "loglevel": "warning",
    }).run()


if __name__ == "__main__":
    main()
