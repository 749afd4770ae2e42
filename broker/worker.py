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
from broker.audit import ChainWindows, chain_audit, fold_audit
from broker.clock import get_clock, get_sleep
from broker.connections import RevocationWindows, purge_inactive, retry_revocations
from broker.db import get_db
from broker.keys import reseal
from broker.models import WORKER_HEARTBEAT, WorkerState
from broker.risc import purge_security_events
from broker.tenancy import assertions
from broker.tokens import RefreshWindows, refresh_due

__all__ = ["DUTIES", "Pass", "Windows", "beat", "chain_audit", "fold_audit", "purge_inactive",
           "purge_security_events", "refresh_due", "reseal", "retry_revocations", "run",
           "run_once", "run_pass"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows(RefreshWindows, ChainWindows, RevocationWindows):
    """How far ahead and back the worker looks: every duty's windows in one value."""


DUTIES = (refresh_due, chain_audit, fold_audit, retry_revocations, webhooks.deliver_due, reseal,
          purge_inactive, purge_security_events, assertions.purge_assertions)


@dataclass(frozen=True)
class Pass:
    """One pass over the duties: each duty's count (-1 when it failed) and what each failure was."""

    report: dict[str, int]
    failures: dict[str, Exception]


def run_pass(app: Flask) -> Pass:
    """Run every duty once; a failing duty does not stop the others."""
    report: dict[str, int] = {}
    failures: dict[str, Exception] = {}
    for duty in DUTIES:
        try:
            report[duty.__name__] = int(duty(app))
        except Exception as exc:  # noqa: BLE001 - one duty's failure must not stop the rest
            failures[duty.__name__] = exc
            report[duty.__name__] = -1
    return Pass(report, failures)


def run_once(app: Flask) -> dict[str, int]:
    """Run every duty once and log each failure; return each duty's count (-1: failed)."""
    done = run_pass(app)
    debug = app.config["BROKER"].DEBUG
    for name, exc in done.failures.items():
        # The class names the failure; a traceback (and the message, which may quote data)
        # only when asked for.
        log.error("worker duty %s failed: %s", name, type(exc).__name__,
                  exc_info=exc if debug else None, extra={"event": "worker_duty_failed"})
    return done.report


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
