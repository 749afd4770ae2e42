"""The worker: proactive refresh, keep-alive, audit chaining, revocations, webhooks, re-seal,
retention. Work is claimed with FOR UPDATE SKIP LOCKED so replicas never share a row.

Each duty lives with its domain; this module lists them and runs the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

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

__all__ = ["DUTIES", "HOUSEKEEPING", "Pass", "Windows", "beat", "chain_audit", "fold_audit",
           "purge_inactive", "purge_security_events", "refresh_due", "refresh_loop", "reseal",
           "retry_revocations", "run", "run_once", "run_pass"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows(RefreshWindows, ChainWindows, RevocationWindows):
    """How far ahead and back the worker looks: every duty's windows in one value."""


DUTIES = (refresh_due, chain_audit, fold_audit, retry_revocations, webhooks.deliver_due, reseal,
          purge_inactive, purge_security_events, assertions.purge_assertions)
# What the loop's main thread runs: `run` refreshes in a thread of its own, so a pass of the
# other duties (chaining thousands of audit events, say) never leaves the refresh slots idle.
HOUSEKEEPING = tuple(duty for duty in DUTIES if duty is not refresh_due)
# Batches of `parallel` refreshes one call of the refresh thread claims: every return drains
# the refreshes in flight, so returns are rare while connections keep coming due.
REFRESH_ROUNDS = 100
# Seconds past the refresh budget that stopping waits for the refreshes in flight to store.
STORE_GRACE = 5.0

Duty = Callable[[Flask], int]


@dataclass(frozen=True)
class Pass:
    """One pass over the duties: each duty's count (-1 when it failed) and what each failure was."""

    report: dict[str, int]
    failures: dict[str, Exception]


def run_pass(app: Flask, duties: Sequence[Duty] = DUTIES) -> Pass:
    """Run every duty once; a failing duty does not stop the others."""
    report: dict[str, int] = {}
    failures: dict[str, Exception] = {}
    for duty in duties:
        try:
            report[duty.__name__] = int(duty(app))
        except Exception as exc:  # noqa: BLE001 - one duty's failure must not stop the rest
            failures[duty.__name__] = exc
            report[duty.__name__] = -1
    return Pass(report, failures)


def _log_failure(app: Flask, name: str, exc: Exception) -> None:
    # The class names the failure; a traceback (and the message, which may quote data) only
    # when asked for.
    log.error("worker duty %s failed: %s", name, type(exc).__name__,
              exc_info=exc if app.config["BROKER"].DEBUG else None,
              extra={"event": "worker_duty_failed"})


def run_once(app: Flask, duties: Sequence[Duty] = DUTIES) -> dict[str, int]:
    """Run every duty once and log each failure; return each duty's count (-1: failed)."""
    done = run_pass(app, duties)
    for name, exc in done.failures.items():
        _log_failure(app, name, exc)
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


def _logged_pass(app: Flask, duties: Sequence[Duty], interval: float) -> dict[str, int]:
    """Run one pass, record the heartbeat and log the report."""
    report = run_once(app, duties)
    beat(app, interval)
    log.info("worker pass: %s", report, extra={"event": "worker"})
    return report


def _busy(duties: Sequence[Duty], report: dict[str, int]) -> Sequence[Duty]:
    """Return the duties that filled their batch: they go again at once, and only they (the
    others wait for the interval, not re-run with every batch of a long backlog)."""
    batch = Windows().batch
    return [duty for duty in duties if report.get(duty.__name__, 0) >= batch]


def refresh_loop(app: Flask, interval: float, stop: threading.Event) -> None:
    """Refresh due connections until `stop` is set; pause `interval` once none are left."""
    w = Windows()
    rounds = replace(w, refresh_batch=w.parallel * REFRESH_ROUNDS)
    while not stop.is_set():
        try:
            stored = refresh_due(app, rounds, stop)
        except Exception as exc:  # noqa: BLE001 - a failed pass is logged; the next one tries
            _log_failure(app, "refresh_due", exc)
            stored = 0
        if stored:
            log.info("worker refreshed %d", stored,
                     extra={"event": "worker_refresh", "refreshed": stored})
        if stored < w.batch:
            stop.wait(interval)


def _refresher(app: Flask, interval: float, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=refresh_loop, args=(app, interval, stop),
                              name="refresh-due", daemon=True)
    thread.start()
    return thread


def run(
    app: Flask, *, once: bool = False, interval: float = 15.0,
    stop: threading.Event | None = None,
) -> None:
    """Run the duties forever (or once, or until `stop` is set); a duty that filled its batch
    goes again at once, the others every `interval`.

    On PostgreSQL refreshes run in a thread of their own beside the other duties (on SQLite,
    whose one writer they would wait on, in the same pass). On the way out no more are claimed
    and those in flight are stored first: a token Google minted is not thrown away.
    """
    if once:
        _logged_pass(app, DUTIES, interval)
        return
    asked = stop or threading.Event()  # without one, the loop ends by an exception
    halt = threading.Event()  # the refresh thread's own stop, set however the loop ends
    inline = get_db(app).is_sqlite
    refresher = None if inline else _refresher(app, interval, halt)
    every = DUTIES if inline else HOUSEKEEPING
    busy: Sequence[Duty] = ()
    full_at = 0.0  # monotonic: when every duty is next due
    try:
        while not asked.is_set():
            if refresher is not None and not refresher.is_alive():  # a BaseException ended it
                log.error("worker refresh thread ended; restarting it",
                          extra={"event": "worker_duty_failed"})
                refresher = _refresher(app, interval, halt)
            duties = busy
            if not busy or time.monotonic() >= full_at:
                duties, full_at = every, time.monotonic() + interval
            busy = _busy(duties, _logged_pass(app, duties, interval))
            if busy:
                continue
            if stop is None:
                get_sleep(app)(interval)
            else:
                stop.wait(interval)  # a stop asked for meanwhile ends the pause at once
    finally:
        halt.set()
        if refresher is not None:
            # Bounded: a refresh in flight ends within its budget; past it the lease expires.
            refresher.join(app.config["BROKER"].REFRESH_BUDGET + STORE_GRACE)
            if refresher.is_alive():
                log.warning("worker stopped with refreshes still in flight",
                            extra={"event": "worker_refresh"})
