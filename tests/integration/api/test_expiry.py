"""`expires_in` is measured when the answer leaves, never overstating the token's life."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from broker.clock import EXTENSION
from tests.conftest import Clock
from tests.plugins.world import World


class TickingClock(Clock):
    """A clock that moves one second each time it is read, as a slow request would see."""

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


def test_expires_in_counts_from_the_answer_not_the_request(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    world.emulator.settings(access_token_lifetime=120)
    world.app.extensions[EXTENSION] = TickingClock()
    answer = world.token({"user": world.user.email, "min_ttl": 60})
    assert answer.status_code == 200, answer.json
    # The token was minted after the request began; counting from then would say 121 or more.
    assert 0 < answer.json["expires_in"] < 120
