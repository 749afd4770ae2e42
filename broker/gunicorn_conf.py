"""gunicorn settings for `broker serve`: quiet access log, metrics cleanup per worker."""

from __future__ import annotations

import os
import shutil
from typing import Any

accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'  # %(U)s: path, no query string
graceful_timeout = 10
timeout = 60


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
