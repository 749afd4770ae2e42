"""Rate limits: per API client (after auth and the IP check); failed auth, sign-ins and OAuth
callbacks per IP.

With Redis every process shares the windows. When Redis stops answering, each process counts
in its own memory (fail open per process: a limit then holds per process, not per cluster)
until Redis answers again; hand-outs never wait on a dead Redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from flask import Flask, current_app
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from prometheus_client import Counter

from broker.errors import RateLimited

log = logging.getLogger(__name__)
EXTENSION = "broker.limits"
# Seconds a process counts alone after Redis failed before it asks Redis again: a dead Redis
# costs one failed call per process per period, not one per request.
REDIS_RETRY = 2.0
REDIS_TIMEOUT = 0.5
FALLBACK = Counter(
    "broker_rate_limit_fallback_total",
    "Rate-limit decisions made in process memory because Redis did not answer",
)


class _Windows:
    """Fixed windows in this process's memory.

    limits' MemoryStorage starts a timer thread on each hit, which costs more than the
    whole fast path; a dict under a lock does the same job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, item: RateLimitItem, *key: str) -> bool:
        """Count one hit; say whether it was within the limit."""
        now, name, period = time.time(), "/".join(key), item.get_expiry()
        with self._lock:
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            ends, count = self._counts.get(name, (0.0, 0))
            if ends <= now:
                ends, count = now + period, 0
            count += 1
            self._counts[name] = (ends, count)
        return count <= item.amount

    def test(self, item: RateLimitItem, *key: str) -> bool:
        """Say whether one more hit would be within the limit."""
        with self._lock:
            ends, count = self._counts.get("/".join(key), (0.0, 0))
        return ends <= time.time() or count < item.amount

    def get_window_stats(self, item: RateLimitItem, *key: str) -> tuple[float, int]:
        """Return (window end, remaining)."""
        with self._lock:
            ends, count = self._counts.get("/".join(key), (time.time(), 0))
        return ends, max(0, item.amount - count)


class _Shared:
    """Windows in Redis, falling back to this process's memory while Redis does not answer."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        storage = storage_from_string(
            redis_url, key_prefix=key_prefix, wrap_exceptions=True,
            socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        self.redis = FixedWindowRateLimiter(storage)
        self.memory = _Windows()
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic; 0: Redis is believed up

    def _use_redis(self) -> bool:
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, exc: StorageError) -> None:
        FALLBACK.inc()
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + REDIS_RETRY
        if first:
            cause = type(exc.storage_error).__name__ if exc.storage_error else "StorageError"
            log.warning("rate limits: Redis unavailable (%s); each process counts alone",
                        cause, extra={"event": "rate_limit_fallback"})

    def _answered(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
            log.info("rate limits: Redis answers again; windows are shared",
                     extra={"event": "rate_limit_recovered"})

    def hit(self, item: RateLimitItem, *key: str) -> bool:
        """Count one hit in Redis, or in memory while it is down; say if within the limit."""
        if self._use_redis():
            try:
                allowed = self.redis.hit(item, *key)
            except StorageError as exc:
                self._failed(exc)
            else:
                self._answered()
                return allowed
        else:
            FALLBACK.inc()
        return self.memory.hit(item, *key)

    def get_window_stats(self, item: RateLimitItem, *key: str) -> tuple[float, int]:
        """Return (window end, remaining) from wherever the last hit was counted."""
        if self._down_until == 0.0:
            try:
                stats = self.redis.get_window_stats(item, *key)
            except StorageError as exc:
                self._failed(exc)
            else:
                return stats.reset_time, stats.remaining
        return self.memory.get_window_stats(item, *key)


def _item(text: str) -> RateLimitItem | None:
    return None if text.strip().lower() == "off" else parse(text)


class Limits:
    """The broker's rate limits in memory, or in Redis (shared by every process) when set."""

    def __init__(
        self, api: str, auth_failures: str, redis_url: str | None = None, *,
        login: str = "off", callback: str = "off", key_prefix: str = "broker",
        risc: str = "off",
    ) -> None:
        self.limiter: _Windows | _Shared = (
            _Shared(redis_url, key_prefix) if redis_url else _Windows())
        self.api = _item(api)
        self.auth_failures = _item(auth_failures)
        self.login = _item(login)
        self.callback = _item(callback)
        self.risc = _item(risc)

    def _refuse(self, item: RateLimitItem, *key: str) -> RateLimited:
        reset, _ = self.limiter.get_window_stats(item, *key)
        retry = max(1, math.ceil(reset - time.time()))
        return RateLimited(headers={"Retry-After": str(retry)})

    def hit_client(self, client_id: str) -> None:
        """Count one request of a client; raise RateLimited past its limit."""
        if self.api is not None and not self.limiter.hit(self.api, "client", client_id):
            raise self._refuse(self.api, "client", client_id)

    def hit_login(self, ip: str) -> None:
        """Count one sign-in start from this address; raise RateLimited past the limit."""
        if self.login is not None and not self.limiter.hit(self.login, "login", ip):
            raise self._refuse(self.login, "login", ip)

    def hit_callback(self, ip: str) -> None:
        """Count one OAuth callback (sign-in or connect) from this address; raise past the limit."""
        if self.callback is not None and not self.limiter.hit(self.callback, "callback", ip):
            raise self._refuse(self.callback, "callback", ip)

    def hit_risc(self, ip: str) -> None:
        """Count one security event pushed from this address; raise RateLimited past the limit."""
        if self.risc is not None and not self.limiter.hit(self.risc, "risc", ip):
            raise self._refuse(self.risc, "risc", ip)

    def auth_failed(self, ip: str) -> None:
        """Count one failed authentication from this address; raise RateLimited past the limit.

        Only failures are counted and refused, so a good client behind the same address as a
        failing one is never locked out.
        """
        item = self.auth_failures
        if item is not None and not self.limiter.hit(item, "authfail", ip):
            raise self._refuse(item, "authfail", ip)


def get_limits(app: Flask | None = None) -> Limits:
    """Return the app's limits."""
    app = app or current_app
    limits: Limits = app.extensions[EXTENSION]
    return limits


def init_app(app: Flask) -> None:
    """Build the limits from the settings."""
    settings = app.config["BROKER"]
    app.extensions[EXTENSION] = Limits(
        settings.API_RATE_LIMIT, settings.AUTH_FAILURE_LIMIT, settings.REDIS_URL,
        login=settings.LOGIN_RATE_LIMIT, callback=settings.CALLBACK_RATE_LIMIT,
        key_prefix=settings.REDIS_KEY_PREFIX, risc=settings.RISC_RATE_LIMIT,
    )
