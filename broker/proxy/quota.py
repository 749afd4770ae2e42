"""The Gmail quota governor: cost-aware budgets per user and per project, a per-user
concurrency cap, and pauses Gmail asks for — in Redis when configured (every process and
replica agrees), else in this process.

Budgets are token buckets in Gmail's quota units: each refills at the per-minute quota spread
over the minute and holds a quarter of it, so a job may burst as Google allows while the
sustained rate stays within Google's per-minute figure.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from broker import metrics
from broker.errors import RateLimited

log = logging.getLogger(__name__)
BURST_SHARE = 0.25  # of the per-minute quota a bucket holds
SLOT_TTL = 600.0  # seconds a concurrency slot outlives a process that died holding it
MAX_PAUSE = 64.0


@dataclass(frozen=True)
class Budget:
    """Quotas in Gmail units per minute, and calls in flight per user."""

    user_per_minute: int
    project_per_minute: int
    user_concurrency: int


@dataclass(frozen=True)
class Slot:
    """A call admitted: release it when the call ends."""

    user: str
    id: str


def _refused(retry_after: float, why: str) -> RateLimited:
    seconds = max(1, math.ceil(retry_after))
    metrics.PROXY_THROTTLED.labels(reason=why).inc()
    return RateLimited(f"Gmail's quota for this {'project' if why == 'project' else 'user'} "
                       f"is spent; retry in {seconds} s.", headers={"Retry-After": str(seconds)},
                       reason=why)


class _Bucket:
    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = max(1.0, per_minute * BURST_SHARE)
        self.rate = per_minute / 60.0
        self.level, self.at = self.capacity, now

    def wait_for(self, cost: int, now: float) -> float:
        """Return how long until `cost` units are there (0: now)."""
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate


class MemoryGovernor:
    """The governor in this process's memory."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._users: dict[str, _Bucket] = {}
        self._project = _Bucket(budget.project_per_minute, time.monotonic())
        self._flying: dict[str, int] = {}
        self._paused: dict[str, float] = {}
        self._strikes: dict[str, tuple[int, float]] = {}

    def admit(self, user: str, cost: int) -> Slot:
        """Take `cost` units and a slot for `user`, or raise RateLimited with Retry-After."""
        now = time.monotonic()
        with self._lock:
            until = self._paused.get(user, 0.0)
            if until > now:
                raise _refused(until - now, "paused")
            if self._flying.get(user, 0) >= self.budget.user_concurrency:
                raise _refused(1, "concurrency")
            if len(self._users) > 100_000:  # idle users' full buckets need no memory
                self._users = {k: b for k, b in self._users.items() if b.level < b.capacity}
            bucket = self._users.get(user) or _Bucket(self.budget.user_per_minute, now)
            self._users[user] = bucket
            wait = bucket.wait_for(cost, now)
            if wait:
                raise _refused(wait, "user")
            project_wait = self._project.wait_for(cost, now)
            if project_wait:
                raise _refused(project_wait, "project")
            bucket.level -= cost
            self._project.level -= cost
            self._flying[user] = self._flying.get(user, 0) + 1
        return Slot(user, "")

    def release(self, slot: Slot) -> None:
        """Give a call's slot back."""
        with self._lock:
            left = self._flying.get(slot.user, 1) - 1
            if left > 0:
                self._flying[slot.user] = left
            else:
                self._flying.pop(slot.user, None)

    def pause(self, user: str, retry_after: float | None) -> float:
        """Pause `user` for Retry-After, else for a backoff that doubles per strike."""
        now = time.monotonic()
        with self._lock:
            strikes, last = self._strikes.get(user, (0, 0.0))
            strikes = strikes + 1 if now - last < 300 else 1
            self._strikes[user] = (strikes, now)
            seconds = retry_after if retry_after else min(MAX_PAUSE, 2.0 ** strikes)
            self._paused[user] = max(self._paused.get(user, 0.0), now + seconds)
        return seconds


# KEYS: user bucket, project bucket, user slots, user pause.
# ARGV: cost, user capacity, user rate, project capacity, project rate, concurrency, slot id,
# slot ttl. Returns {0, wait, reason} or {1}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cost = tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[4]) or '0')
if paused > now then return {0, tostring(paused - now), 'paused'} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return {0, '1', 'concurrency'} end
local function level(key, cap, rate)
  local s = redis.call('HMGET', key, 'level', 'at')
  local l, at = tonumber(s[1]), tonumber(s[2])
  if l == nil then return cap end
  return math.min(cap, l + (now - at) * rate)
end
local ucap, urate = tonumber(ARGV[2]), tonumber(ARGV[3])
local pcap, prate = tonumber(ARGV[4]), tonumber(ARGV[5])
local u, p = level(KEYS[1], ucap, urate), level(KEYS[2], pcap, prate)
local uneed, pneed = math.min(cost, ucap) - u, math.min(cost, pcap) - p
if uneed > 0 then return {0, tostring(uneed / urate), 'user'} end
if pneed > 0 then return {0, tostring(pneed / prate), 'project'} end
redis.call('HSET', KEYS[1], 'level', u - cost, 'at', now)
redis.call('EXPIRE', KEYS[1], 120)
redis.call('HSET', KEYS[2], 'level', p - cost, 'at', now)
redis.call('EXPIRE', KEYS[2], 120)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[7])
redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[8])))
return {1}
"""
# KEYS: user pause, user strikes. ARGV: retry_after (0: back off), max pause.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local strikes = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 300)
local seconds = tonumber(ARGV[1])
if seconds <= 0 then seconds = math.min(tonumber(ARGV[2]), 2 ^ strikes) end
local until_ = now + seconds
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], tostring(until_), 'EX', math.ceil(seconds) + 1)
end
return tostring(seconds)
"""


class RedisGovernor:
    """The governor in Redis, shared by every process and replica; in memory while it is down."""

    def __init__(self, budget: Budget, url: str, prefix: str) -> None:
        import redis

        self.budget = budget
        self.prefix = f"{prefix}:gmail"
        self.client: Any = redis.Redis.from_url(url, socket_timeout=0.5,
                                                socket_connect_timeout=0.5)
        self._admit = self.client.register_script(_ADMIT)
        self._pause = self.client.register_script(_PAUSE)
        self.fallback = MemoryGovernor(budget)
        self._errors = (redis.RedisError, OSError)
        self._is_down = False  # logged once per outage, as the rate limits do

    def _keys(self, user: str) -> list[str]:
        p = self.prefix
        return [f"{p}:u:{user}", f"{p}:project", f"{p}:slots:{user}", f"{p}:pause:{user}"]

    def _down(self, exc: BaseException) -> None:
        metrics.PROXY_GOVERNOR_FALLBACK.inc()
        if not self._is_down:
            self._is_down = True
            log.warning("quota governor: Redis unavailable (%s); this process governs alone",
                        type(exc).__name__, extra={"event": "governor_fallback"})

    def _up(self) -> None:
        if self._is_down:
            self._is_down = False
            log.info("quota governor: Redis answers again; budgets are shared",
                     extra={"event": "governor_recovered"})

    def admit(self, user: str, cost: int) -> Slot:
        """Take `cost` units and a slot for `user`, or raise RateLimited with Retry-After."""
        b, slot = self.budget, uuid.uuid4().hex
        try:
            answer = self._admit(keys=self._keys(user), args=[
                cost, b.user_per_minute * BURST_SHARE, b.user_per_minute / 60.0,
                b.project_per_minute * BURST_SHARE, b.project_per_minute / 60.0,
                b.user_concurrency, slot, SLOT_TTL])
        except self._errors as exc:
            self._down(exc)
            return self.fallback.admit(user, cost)
        self._up()
        if int(answer[0]) != 1:
            raise _refused(float(answer[1]), answer[2].decode())
        return Slot(user, slot)

    def release(self, slot: Slot) -> None:
        """Give a call's slot back."""
        if not slot.id:
            self.fallback.release(slot)
            return
        try:
            self.client.zrem(self._keys(slot.user)[2], slot.id)
        except self._errors as exc:
            self._down(exc)  # the slot expires on its own after SLOT_TTL

    def pause(self, user: str, retry_after: float | None) -> float:
        """Pause `user` for everyone, for Retry-After or a doubling backoff."""
        try:
            return float(self._pause(keys=[self._keys(user)[3], f"{self.prefix}:strikes:{user}"],
                                     args=[retry_after or 0, MAX_PAUSE]))
        except self._errors as exc:
            self._down(exc)
            return self.fallback.pause(user, retry_after)


Governor = MemoryGovernor | RedisGovernor


def make_governor(budget: Budget, redis_url: str | None, prefix: str) -> Governor:
    """Return the governor for these settings."""
    return RedisGovernor(budget, redis_url, prefix) if redis_url else MemoryGovernor(budget)
