"""Redis lost mid-run: rate limits count per process (logged, counted), then share again."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from broker import limits
from tests.plugins.world import World
from tests.reliability.tcpproxy import TcpProxy


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    """A cuttable link to the local Redis (skipped when none answers)."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    tcp = TcpProxy("127.0.0.1", 6379)
    yield tcp
    tcp.close()


def _fallbacks() -> float:
    return REGISTRY.get_sample_value("broker_rate_limit_fallback_total") or 0.0


def test_rate_limits_fall_back_to_each_process_and_share_again(
    make_broker: Callable[..., Flask], make_world: Callable[..., World], redis_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "REDIS_RETRY", 0.0)  # ask Redis again on the next request
    app = make_broker(REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/0",
                      REDIS_KEY_PREFIX="broker-test-" + secrets.token_hex(6),
                      API_RATE_LIMIT="3/minute")
    world = make_world(app=app)
    assert world.token().status_code == 200  # counted in Redis: 1 of 3
    redis_proxy.cut()
    before = _fallbacks()
    with caplog.at_level(logging.INFO, logger="broker.limits"):
        during = [world.token().status_code for _ in range(4)]
        redis_proxy.restore()
        after = [world.token().status_code for _ in range(3)]
    # Fail open per process: this process counts alone, from zero, and still refuses past 3.
    assert during == [200, 200, 200, 429]
    assert _fallbacks() - before == 4
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("rate_limit_fallback") == 1 and "rate_limit_recovered" in events
    # Shared again: Redis's window still holds the first hit, so two more pass, not three.
    assert after == [200, 200, 429]
