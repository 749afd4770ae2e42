"""The quota governor in memory and in Redis, and proxy tokens."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from broker.errors import InvalidToken, RateLimited
from broker.proxy import Budget, MemoryGovernor, ProxyGrant, ProxyTokens, RedisGovernor

REDIS = "redis://127.0.0.1:6379/0"


def governors(budget: Budget) -> list[MemoryGovernor | RedisGovernor]:
    """A memory governor and a Redis one (on its own key prefix)."""
    return [MemoryGovernor(budget), RedisGovernor(budget, REDIS, f"t{uuid.uuid4().hex}")]


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "redis"])
def test_costs_bursts_and_concurrency_are_governed(kind: int) -> None:
    # 600 units a minute: a bucket of 150 (a quarter), refilling at 10 a second.
    governor = governors(Budget(600, 1_000_000, 2))[kind]
    first = governor.admit("t:alice", 100)
    governor.release(first)
    with pytest.raises(RateLimited) as spent:  # 50 left: a send (100) waits about 5 s
        governor.admit("t:alice", 100)
    assert 4 <= int(spent.value.headers["Retry-After"]) <= 6
    other = [governor.admit("t:bob", 5), governor.admit("t:bob", 5)]
    with pytest.raises(RateLimited) as busy:  # two in flight: the cap
        governor.admit("t:bob", 5)
    assert busy.value.extras["reason"] == "concurrency"
    governor.release(other[0])
    governor.release(governor.admit("t:bob", 5))


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "redis"])
def test_a_pause_gmail_asked_for_holds_every_call_of_that_user(kind: int) -> None:
    governor = governors(Budget(15_000, 1_200_000, 10))[kind]
    assert governor.pause("t:carol", 30) == 30
    with pytest.raises(RateLimited) as paused:
        governor.admit("t:carol", 1)
    assert paused.value.extras["reason"] == "paused"
    assert 29 <= int(paused.value.headers["Retry-After"]) <= 30
    governor.release(governor.admit("t:dave", 1))  # others are not paused
    assert governor.pause("t:erin", None) == 2.0  # no Retry-After: a doubling backoff
    assert governor.pause("t:erin", None) == 4.0


def test_processes_share_the_redis_governor() -> None:
    prefix = f"t{uuid.uuid4().hex}"
    budget = Budget(15_000, 1_200_000, 1)
    one, two = RedisGovernor(budget, REDIS, prefix), RedisGovernor(budget, REDIS, prefix)
    slot = one.admit("t:alice", 5)
    with pytest.raises(RateLimited):
        two.admit("t:alice", 5)
    one.release(slot)
    two.release(two.admit("t:alice", 5))
    one.pause("t:alice", 10)
    with pytest.raises(RateLimited):
        two.admit("t:alice", 5)


def test_without_redis_the_governor_falls_back_to_this_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    governor = RedisGovernor(Budget(15_000, 1_200_000, 1), "redis://127.0.0.1:1/0", "down")
    slot = governor.admit("t:alice", 5)
    with pytest.raises(RateLimited):  # the fallback still caps concurrency
        governor.admit("t:alice", 5)
    governor.release(slot)
    # One line per outage, not per call (the metric counts the calls).
    assert [r.__dict__.get("event") for r in caplog.records].count("governor_fallback") == 1


def test_proxy_tokens_open_only_unexpired_and_unaltered() -> None:
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    tokens = ProxyTokens("a secret key of the broker")
    grant = ProxyGrant("cl_1", uuid.uuid4(), uuid.uuid4(), "alice@acme.test",
                       now + dt.timedelta(minutes=10))
    token = tokens.issue(grant)
    assert tokens.open(token, now) == grant
    assert "alice" not in token and "cl_1" not in token  # opaque to the job
    with pytest.raises(InvalidToken):
        tokens.open(token, now + dt.timedelta(minutes=10))
    with pytest.raises(InvalidToken):
        tokens.open(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], now)
    with pytest.raises(InvalidToken):
        ProxyTokens("another broker's key").open(token, now)
    with pytest.raises(InvalidToken):
        tokens.open("ya29.a-google-token", now)
