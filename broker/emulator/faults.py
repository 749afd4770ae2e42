"""Count calls per endpoint and make the next calls misbehave on request."""

from __future__ import annotations

import functools
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Response, current_app, request

ENDPOINTS = ("token", "revoke", "userinfo", "certs", "gmail", "tokeninfo")
GRANT_TYPES = ("authorization_code", "refresh_token")
# A hang must end some day: a forgotten fault would otherwise pin a server thread forever.
HANG_LIMIT_SECONDS = 120.0
NO_CACHE = {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate", "Pragma": "no-cache"}

F = TypeVar("F", bound=Callable[..., Any])


class FaultError(ValueError):
    """A fault specification that cannot be applied."""


@dataclass
class Fault:
    """How the next `count` calls to one endpoint misbehave (-1: until cleared)."""

    endpoint: str
    count: int = 1
    status: int | None = None
    body: Any = None
    headers: dict[str, str] | None = None
    latency_ms: int = 0
    mode: str | None = None

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Fault:
        """Validate a control request's fault specification."""
        endpoint = spec.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise FaultError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        mode = spec.get("mode")
        if mode not in (None, "hang", "close"):
            raise FaultError("mode must be 'hang' or 'close'")
        status = spec.get("status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise FaultError("status must be an HTTP status code")
        count = spec.get("count", 1)
        if not isinstance(count, int) or (count < 1 and count != -1):
            raise FaultError("count must be a positive number or -1")
        latency = spec.get("latency_ms", 0)
        if not isinstance(latency, int) or latency < 0:
            raise FaultError("latency_ms must be a non-negative number")
        if status is None and mode is None and not latency:
            raise FaultError("give status, latency_ms or mode")
        headers = spec.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise FaultError("headers must be an object")
        return cls(str(endpoint), count, status, spec.get("body"), headers, latency, mode)

    def to_json(self) -> dict[str, Any]:
        """Describe the fault for the controls."""
        return {
            "endpoint": self.endpoint,
            "count": self.count,
            "status": self.status,
            "body": self.body,
            "latency_ms": self.latency_ms,
            "mode": self.mode,
        }


def _zero_calls() -> dict[str, Any]:
    calls: dict[str, Any] = {"authorize": 0, "token": dict.fromkeys(GRANT_TYPES, 0)}
    calls.update(dict.fromkeys(ENDPOINTS[1:], 0))
    calls["gmail_methods"] = {}
    calls["refreshes_by_account"] = {}
    return calls


class FaultBoard:
    """Pending faults and call counters (neither is persisted)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: list[Fault] = []
        self._release = threading.Event()
        self._calls = _zero_calls()

    def add(self, fault: Fault) -> None:
        """Queue a fault behind any others for the same endpoint."""
        with self._lock:
            self._faults.append(fault)

    def pending(self) -> list[dict[str, Any]]:
        """Return the queued faults."""
        with self._lock:
            return [f.to_json() for f in self._faults]

    def clear(self) -> None:
        """Drop every fault and wake the calls that hang or wait on one."""
        with self._lock:
            self._faults.clear()
            self._release.set()
            self._release = threading.Event()

    def reset(self) -> None:
        """Clear faults and zero the counters."""
        with self._lock:
            self.clear()
            self._calls = _zero_calls()

    def calls(self) -> dict[str, Any]:
        """Return a copy of the counters in the shape of `GET /_emulator/calls`."""
        with self._lock:
            return json.loads(json.dumps(self._calls))  # type: ignore[no-any-return]

    def count(self, endpoint: str, grant_type: str | None = None) -> None:
        """Count one call to an endpoint."""
        with self._lock:
            if endpoint == "token":
                if grant_type in GRANT_TYPES:
                    self._calls["token"][grant_type] += 1
            else:
                self._calls[endpoint] += 1

    def count_refresh(self, email: str) -> None:
        """Count one refresh answered for an account (in `refreshes_by_account`)."""
        with self._lock:
            counts = self._calls["refreshes_by_account"]
            counts[email] = counts.get(email, 0) + 1

    def count_method(self, method_id: str) -> None:
        """Count one call to a Gmail method, by its discovery id."""
        with self._lock:
            methods = self._calls["gmail_methods"]
            methods[method_id] = methods.get(method_id, 0) + 1

    def take(self, endpoint: str) -> tuple[Fault | None, threading.Event]:
        """Consume one use of the first fault for an endpoint."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint == endpoint:
                    if fault.count > 0:
                        fault.count -= 1
                        if fault.count == 0:
                            self._faults.remove(fault)
                    return fault, self._release
            return None, self._release


def _drop_connection() -> Response:
    sock = request.environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        # Shutting down (not closing) sends FIN now; werkzeug's later write fails with EPIPE,
        # which it treats as a dropped connection, so the client gets no HTTP answer at all.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return Response(b"", status=500)
    raise ConnectionAbortedError("this server cannot drop connections")


def _board() -> FaultBoard:
    return cast(FaultBoard, current_app.extensions["google_emulator"].faults)


def misbehave(endpoint: str) -> Response | None:
    """Count the current call and apply the endpoint's next fault, if any."""
    grant_type = request.form.get("grant_type") if endpoint == "token" else None
    _board().count(endpoint, grant_type)
    return apply_fault(endpoint)


def apply_fault(endpoint: str) -> Response | None:
    """Apply the endpoint's next fault to the current (already counted) call, if any.

    The latency and hang waits hold no lock, so slowed calls overlap instead of queueing.
    """
    fault, release = _board().take(endpoint)
    if fault is None:
        return None
    if fault.latency_ms:
        release.wait(fault.latency_ms / 1000)
    if fault.mode == "hang":
        release.wait(HANG_LIMIT_SECONDS)
        return _drop_connection()
    if fault.mode == "close":
        return _drop_connection()
    if fault.status is None:
        return None
    body = fault.body
    if body is None:
        body = {"error": "internal_failure", "error_description": "Emulated fault."}
    if isinstance(body, str):
        payload = body
        mimetype = "text/html" if body.lstrip().startswith("<") else "text/plain"
    else:
        payload, mimetype = json.dumps(body), "application/json"
    headers = {**(NO_CACHE if endpoint == "token" else {}), **(fault.headers or {})}
    return Response(payload, status=fault.status, mimetype=mimetype, headers=headers)


def faulty(endpoint: str) -> Callable[[F], F]:
    """Decorate a view so that it is counted and obeys the endpoint's faults."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            injected = misbehave(endpoint)
            if injected is not None:
                return injected
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
