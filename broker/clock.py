"""The app's clock: tests inject one as `app.extensions["broker.clock"]` instead of sleeping."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from flask import Flask, current_app

from broker.models import utcnow

EXTENSION = "broker.clock"


def get_clock(app: Flask | None = None) -> Callable[[], dt.datetime]:
    """Return the app's clock, a callable answering aware UTC now."""
    app = app or current_app
    clock: Callable[[], dt.datetime] = app.extensions.get(EXTENSION, utcnow)
    return clock


def now(app: Flask | None = None) -> dt.datetime:
    """Return the app clock's current aware UTC time."""
    return get_clock(app)()
