"""The worker: proactive refresh, keep-alive, audit chaining, revocations, webhooks, re-seal,
retention. Work is claimed with FOR UPDATE SKIP LOCKED so replicas never share a row.

Each duty lives with its domain; this module lists them and runs the loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from broker import webhooks
from broker.audit import ChainWindows, chain_audit
from broker.clock import get_clock, get_sleep
from broker.connections import RevocationWindows, purge_inactive, retry_revocations
from broker.db import get_db
from broker.keys import reseal
from broker.models import WORKER_HEARTBEAT, WorkerState
from broker.tokens import RefreshWindows, refresh_due

__all__ = ["DUTIES", "Windows", "beat", "chain_audit", "purge_inactive", "refresh_due", "reseal",
           "retry_revocations", "run", "run_once"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows(RefreshWindows, ChainWindows, RevocationWindows):
    """How far ahead and back the worker looks: every duty's windows in one value."""


DUTIES = (refresh_due, chain_audit, retry_revocations, webhooks.deliver_due, reseal,
          purge_inactive)


def run_once(app: Flask) -> dict[str, int]:
    """Run every duty once; a failing duty is logged and does not stop the others."""
    report = {}
    for duty in DUTIES:
        try:
            report[duty.__name__] = int(duty(app))
        except Exception:  # noqa: BLE001 - one duty's failure must not stop the rest
            log.exception("worker duty %s failed", duty.__name__)
            report[duty.__name__] = -1
    return report


def beat(app: Flask, interval: float) -> None:
    """Record that a pass just completed, so pages can tell a stopped worker from a quiet one."""
    try:
        with get_db(app).transaction() as session:
            row = session.get(WorkerState, WORKER_HEARTBEAT)
            if row is None:
                row = WorkerState(name=WORKER_HEARTBEAT)
                session.add(row)
            row.value = f"{interval:g}"
            row.updated_at = get_clock(app)()
    except SQLAlchemyError:
        # Two replicas writing the first beat at once, or a database blip: the next pass beats.
        log.warning("worker heartbeat not recorded", exc_info=True)


def run(app: Flask, *, once: bool = False, interval: float = 15.0) -> None:
    """Run the duties forever (or once); go again at once while a duty filled its batch."""
    batch = Windows().batch
    while True:
        report = run_once(app)
        beat(app, interval)
        log.info("worker pass: %s", report, extra={"event": "worker"})
        if once:
            return
        if max(report.values(), default=0) < batch:
            get_sleep(app)(interval)
