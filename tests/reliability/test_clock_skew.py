"""Broker and Google clocks minutes apart: tokens are still refreshed before Google expires them.

Both clocks move together, seven minutes apart (either way); at every step the token the broker
hands out must be one the emulator still accepts for at least the asked `min_ttl`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import httpx
import pytest
from flask import Flask

from broker.clock import utcnow
from tests.conftest import Clock
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World

LIFETIME = 3599
MIN_TTL = 300


def _google_remaining(emulator: EmulatorControls, token: str) -> int:
    """Ask the emulator how long it still accepts a token (negative: refused)."""
    answer = httpx.get(emulator.url + "/tokeninfo", params={"access_token": token}, timeout=10)
    if answer.status_code != 200:
        return -1
    return int(answer.json()["expires_in"])


@pytest.mark.parametrize("skew", [420, -420], ids=["google-ahead", "google-behind"])
def test_tokens_are_refreshed_before_google_expires_them(
    make_broker: Callable[..., Flask], make_world: Callable[..., World],
    emulator: EmulatorControls, clock: Clock, skew: int,
) -> None:
    clock.now = utcnow().replace(microsecond=0)
    emulator.clock(skew)
    app = make_broker()
    app.extensions["broker.clock"] = clock
    world = make_world(app=app)
    seen = set()
    started = time.monotonic()
    # Walk the token's whole life and beyond in steps, both clocks moving together.
    for elapsed in range(0, 2 * LIFETIME, 150):
        if elapsed:
            clock.now += dt.timedelta(seconds=150)
        emulator.clock(skew + elapsed)
        answer = world.token({"user": world.user.email, "min_ttl": MIN_TTL})
        assert answer.status_code == 200, answer.json
        token = answer.json["access_token"]
        seen.add(token)
        remaining = _google_remaining(emulator, token)
        assert remaining >= MIN_TTL, (elapsed, remaining, answer.json["expires_in"])
        # The broker's own view never promises more than Google grants (the emulator's clock
        # also runs in real time, the broker's test clock does not).
        drift = time.monotonic() - started
        assert answer.json["expires_in"] <= remaining + 2 + drift, (elapsed, answer.json, remaining)
    assert len(seen) >= 2  # it did refresh along the way
