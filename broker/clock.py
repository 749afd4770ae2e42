"""The one clock and the one sleep: tests inject both on the app instead of waiting."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable

from flask import Flask, current_app, has_app_context

EXTENSION = "broker.clock"
SLEEP_EXTENSION = "broker.sleep"

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], None]


def utcnow() -> dt.datetime:
    """Return the current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def get_clock(app: Flask | None = None) -> Clock:
    """Return the app's clock, a callable answering aware UTC now."""
    app = app or current_app
    clock: Clock = app.extensions.get(EXTENSION, utcnow)
    return clock


def now(app: Flask | None = None) -> dt.datetime:
    """Return the app clock's current aware UTC time."""
    return get_clock(app)()


def get_sleep(app: Flask | None = None) -> Sleep:
    """Return the app's sleep (tests replace it to move their clock instead of waiting)."""
    app = app or current_app
    sleep: Sleep = app.extensions.get(SLEEP_EXTENSION, time.sleep)
    return sleep


def app_clock(app: Flask) -> Clock:
    """Return a clock for services: it asks the app on each call, as tests swap the app's."""
    return lambda: get_clock(app)()


def app_sleep(app: Flask) -> Sleep:
    """Return a sleep for services: it asks the app on each call, as tests swap the app's."""
    return lambda seconds: get_sleep(app)(seconds)


def current_time() -> dt.datetime:
    """Return the current app's clock time; outside any app (a bare script), UTC now."""
    return get_clock(current_app)() if has_app_context() else utcnow()


def backoff(failures: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Return seconds to wait after `failures` consecutive failures: exponential, full jitter."""
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311 - jitter, not security
