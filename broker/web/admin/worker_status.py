"""The worker's heartbeat as admin pages show it: when it last completed a pass, and if late."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from broker.models import WORKER_HEARTBEAT, WorkerState

# A worker is late after this many of its own pass intervals, and never before the floor:
# one slow pass (a Google outage, a big re-seal) is not a stopped worker.
LATE_AFTER_PASSES = 4
LATE_FLOOR = dt.timedelta(minutes=2)


@dataclass(frozen=True)
class WorkerSeen:
    """When the worker last completed a pass (None: never), and whether that is too long ago."""

    last: dt.datetime | None
    late: bool


def worker_seen(session: Session, now: dt.datetime) -> WorkerSeen:
    """Read the heartbeat row and judge it against the interval the worker recorded."""
    row = session.get(WorkerState, WORKER_HEARTBEAT)
    if row is None:
        return WorkerSeen(last=None, late=True)
    try:
        interval = dt.timedelta(seconds=float(row.value))
    except ValueError:
        interval = dt.timedelta(0)
    allowed = max(interval * LATE_AFTER_PASSES, LATE_FLOOR)
    return WorkerSeen(last=row.updated_at, late=now - row.updated_at > allowed)
