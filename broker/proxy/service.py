"""One proxied Gmail call: the method allowlist, the quota governor, the hand-out's policy,
the stored token attached inside the broker, streaming both ways, one retry after a 401, and
an audit row before the call leaves and one when it ends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from flask import Flask
from werkzeug.wrappers import Response

from broker import audit, metrics
from broker.callouts import http_client
from broker.errors import (
    BrokerError,
    GmailMethodNotAllowed,
    InvalidRequest,
    PayloadTooLarge,
    UpstreamUnavailable,
    UserMismatch,
)
from broker.google import Method, gmail_methods
from broker.proxy.egress import Egress, request_headers, response_headers
from broker.proxy.quota import Budget, Governor, Slot, make_governor
from broker.proxy.tokens import ProxyGrant, ProxyTokens
from broker.tokens import Handout, TokenRequest

EXTENSION = "broker.proxy"
MAX_BODY = 35 * 1024 * 1024  # Gmail's own cap on a message with its attachments
REPLAY_MAX = 1024 * 1024  # bodies up to this are kept, so a call refused for its token is resent
CHUNK = 64 * 1024
ERROR_BODY_MAX = 64 * 1024
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
GET_FORMAT_METHODS = frozenset({"gmail.users.messages.get", "gmail.users.threads.get",
                                "gmail.users.drafts.get"})
log = logging.getLogger(__name__)


class Turn:
    """One call's hold on a turn at the CPU and the database: given back while Gmail answers."""

    def __init__(self, turns: threading.BoundedSemaphore) -> None:
        self._turns = turns
        self.held = False

    def take(self) -> None:
        """Wait for a turn unless this call holds one."""
        if not self.held:
            self._turns.acquire()
            self.held = True

    def give(self) -> None:
        """Give the turn back, if held."""
        if self.held:
            self.held = False
            self._turns.release()


@dataclass
class Call:
    """A call in progress: what it sends, what it has cost, when it started."""

    handout: Handout
    egress: Egress
    user: str
    turn: Turn
    started: float = field(default_factory=time.monotonic)
    bytes_up: int = 0
    bytes_down: int = 0
    status: int = 0
    attempts: int = 0
    finished: bool = False  # its slot released and its result audited, exactly once
    broken: bool = False  # the answer was cut (Gmail went silent, or the total timeout)


class Proxy:
    """The app's proxy: method table, governor, proxy tokens and a pooled client to Gmail."""

    def __init__(self, app: Flask) -> None:
        settings = app.config["BROKER"]
        self.app = app
        self.settings = settings
        self.table = gmail_methods()
        self.base = settings.GMAIL_API_URL.rstrip("/")
        self.public = settings.PUBLIC_URL.rstrip("/") + "/proxy"
        self.governor: Governor = make_governor(
            Budget(settings.GMAIL_USER_QUOTA, settings.GMAIL_PROJECT_QUOTA,
                   settings.GMAIL_USER_CONCURRENCY),
            settings.REDIS_URL, settings.REDIS_KEY_PREFIX,
        )
        self.tokens = ProxyTokens(str(app.config["SECRET_KEY"]))
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        # Proxied calls take turns at their CPU and database work (BROKER_PROXY_TURNS per
        # process), from authentication to the moment the call leaves, and again for the
        # result row; never while Gmail answers. With hundreds in flight under gevent, a crowd
        # would otherwise starve the few holding a pooled connection until checkout timed out,
        # and the token hand-out behind them. Hand-outs never wait for a turn.
        self.turns = threading.BoundedSemaphore(settings.PROXY_TURNS)

    @property
    def http(self) -> httpx.Client:
        """Return the pooled, kept-alive client to Gmail (built on first use, after fork)."""
        with self._lock:
            if self._http is None:
                idle = self.settings.PROXY_IDLE_TIMEOUT
                # No redirects (one is answered, never followed); no proxy from the
                # environment either: the upstream is fixed.
                self._http = http_client(
                    self.settings.CA_BUNDLE, httpx.Timeout(idle, connect=10.0, pool=10.0),
                    limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
                    trust_env=False,
                )
            return self._http

    # --- policy ---------------------------------------------------------------------------

    def user_for(self, handout: Handout, egress: Egress, grant: ProxyGrant | None) -> str:
        """Return who the call acts for: the proxy token's user, or the one the path names."""
        named = egress.user
        if grant is not None:
            if named != "me" and named.lower() not in (grant.email.lower(), str(grant.user_id)):
                handout.refuse(UserMismatch(
                    "userId names another user than the proxy token's; use me"))
            return str(grant.user_id)
        if named == "me" or not named:
            handout.refuse(InvalidRequest("with client credentials, name the user in the path "
                                          "(users/alice@example.com/…), not me"))
        return named

    def check_method(self, handout: Handout, egress: Egress) -> Method:
        """Refuse a method outside the client's allowlist (default: what its scopes permit)."""
        method = egress.match.method
        allowed = handout.client.gmail_methods
        if allowed is None:
            permitted = method.id in self.table.permitted_by(handout.client.allowed_scopes)
        else:
            permitted = method.id in allowed
        if not permitted:
            handout.refuse(GmailMethodNotAllowed(
                f"this client may not call {method.id}", method=method.id))
        return method

    @staticmethod
    def chooser(egress: Egress) -> Callable[[list[str]], list[str] | None]:
        """Return the scope picker of this call: the narrowest scope its method accepts."""
        method, names = egress.match.method, {name for name, _ in egress.query}
        if method.id in GET_FORMAT_METHODS:
            fmt = dict(egress.query).get("format", "full")
            metadata_ok = fmt in ("metadata", "minimal")
        else:
            metadata_ok = "q" not in names  # Gmail refuses search under gmail.metadata

        def choose(usable: list[str]) -> list[str] | None:
            scope = method.narrowest(set(usable), metadata_ok)
            return [scope] if scope else None

        return choose

    # --- the call ---------------------------------------------------------------------------

    def turn(self) -> Turn:
        """Return a call's turn, not yet taken."""
        return Turn(self.turns)

    def forward(
        self, handout: Handout, egress: Egress, grant: ProxyGrant | None,
        headers: list[tuple[str, str]], body: Callable[[], Iterator[bytes]] | bytes,
        length: int | None, turn: Turn,
    ) -> Response:
        """Authorize, govern and send one call; return Gmail's answer as a streamed response."""
        handout.details = {"method": egress.method_id, "query": egress.audited_query()}
        method = self.check_method(handout, egress)
        user = self.user_for(handout, egress, grant)
        if length is not None and length > MAX_BODY:
            handout.refuse(PayloadTooLarge("Gmail takes at most 35 MB per request."))
        try:
            slot = self.governor.admit(f"{handout.client.tenant_id}:{user.lower()}", method.cost)
        except BrokerError as exc:
            metrics.PROXY_CALLS.labels(method=method.id, outcome="throttled").inc()
            handout.refuse(exc)
        call = Call(handout, egress, user, turn)
        try:
            return self._send(call, method, slot, headers, body)
        except BaseException:
            if not call.finished:  # refused before it left (policy, token): no result row
                call.finished = True
                self.governor.release(slot)
            raise

    def _request(self, call: Call, method: Method, rejected: str | None) -> tuple[Handout, str]:
        handout = call.handout
        if call.attempts:  # a retry: a new row, for a new call leaves the broker
            handout = Handout(self.app, handout.client, handout.address,
                              credential=handout.credential, action=handout.action)
            handout.details = {**call.handout.details, "retry": "after_401"}
        wanted = tuple(s for s in method.scopes if s in handout.client.allowed_scopes)
        call.turn.take()
        issued = handout.run(TokenRequest(
            user=call.user, scopes=None, min_ttl=60, rejected_token=rejected,
            choose=self.chooser(call.egress), wanted=wanted,
        ))
        call.attempts += 1
        metrics.PROXY_UNITS.labels(tenant=str(handout.client.tenant_id)).inc(method.cost)
        return handout, issued.token.access_token

    def _send(
        self, call: Call, method: Method, slot: Slot, headers: list[tuple[str, str]],
        body: Callable[[], Iterator[bytes]] | bytes,
    ) -> Response:
        forwarded = request_headers(headers)
        forwarded["user-agent"] = "gmail-token-broker-proxy"
        url = call.egress.url(self.base)
        handout, token = self._request(call, method, None)
        while True:
            content: Any = body if isinstance(body, bytes) else self._counted(call, body())
            if isinstance(body, bytes):
                call.bytes_up = len(body)
            request = self.http.build_request(
                call.egress.http_method, url,
                headers={**forwarded, "authorization": f"Bearer {token}"}, content=content,
            )
            call.turn.give()  # Gmail's wait is no one's turn
            try:
                upstream = self.http.send(request, stream=True)
            except BrokerError:  # the job's body was too large or too slow: cut, and said so
                self._finish(call, slot, "error")
                raise
            except httpx.HTTPError as exc:
                self._finish(call, slot, "error")
                log.warning("gmail unreachable: %s", type(exc).__name__,
                            extra={"event": "proxy_upstream", "method": method.id})
                raise UpstreamUnavailable("Gmail did not answer in time; retry later.",
                                          headers={"Retry-After": "1"}) from None
            call.status = upstream.status_code
            metrics.PROXY_SECONDS.labels(method=method.id).observe(
                time.monotonic() - call.started)
            if upstream.status_code == 401 and call.attempts < 2:
                upstream.close()  # Google refused the token: refresh it once ...
                handout, token = self._request(call, method, token)
                if isinstance(body, bytes):
                    continue  # ... and send once more, when the body can be sent again
                self._finish(call, slot, "gmail_error")
                raise UpstreamUnavailable("Gmail refused the stored token, which is now "
                                          "refreshed: send the call again.",
                                          headers={"Retry-After": "1"})
            break
        if upstream.status_code >= 400:
            return self._error_answer(call, method, slot, upstream)
        return self._stream_answer(call, method, slot, upstream)

    def _counted(self, call: Call, chunks: Iterator[bytes]) -> Iterator[bytes]:
        deadline = call.started + self.settings.PROXY_TOTAL_TIMEOUT
        for chunk in chunks:
            call.bytes_up += len(chunk)
            if call.bytes_up > MAX_BODY:
                raise PayloadTooLarge("Gmail takes at most 35 MB per request.")
            if time.monotonic() > deadline:
                raise UpstreamUnavailable("The upload took longer than the proxy allows "
                                          "(BROKER_PROXY_TOTAL_TIMEOUT).")
            yield chunk

    def _error_answer(
        self, call: Call, method: Method, slot: Slot, upstream: httpx.Response
    ) -> Response:
        try:
            raw = b""
            for chunk in upstream.iter_bytes(CHUNK):
                raw += chunk
                if len(raw) > ERROR_BODY_MAX:
                    break
        except httpx.HTTPError:
            raw = b""
        finally:
            upstream.close()
        call.bytes_down = len(raw)
        if upstream.status_code == 429 or (
            upstream.status_code == 403 and _reason(raw) in RATE_REASONS
        ):
            paused = self.governor.pause(slot.user, _retry_after(upstream))
            metrics.PROXY_PAUSES.inc()
            log.warning("gmail quota: user paused %.0f s", paused,
                        extra={"event": "proxy_paused", "method": method.id})
        self._finish(call, slot, "gmail_error")
        out = [(k, v) for k, v in response_headers(upstream.headers.multi_items())
               if k.lower() not in ("content-length", "content-encoding")]
        return Response(raw, status=upstream.status_code, headers=out)

    def _stream_answer(
        self, call: Call, method: Method, slot: Slot, upstream: httpx.Response
    ) -> Response:
        deadline = call.started + self.settings.PROXY_TOTAL_TIMEOUT

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in upstream.iter_raw(CHUNK):  # as sent: gzip stays gzip
                    call.bytes_down += len(chunk)
                    yield chunk
                    if time.monotonic() > deadline:
                        call.broken = True
                        log.warning("proxied answer cut at the total timeout",
                                    extra={"event": "proxy_timeout", "method": method.id})
                        return
            except httpx.HTTPError as exc:  # the job sees a short body; the audit says why
                call.broken = True
                log.warning("gmail went silent mid-answer: %s", type(exc).__name__,
                            extra={"event": "proxy_upstream", "method": method.id})

        def close() -> None:
            upstream.close()
            self._finish(call, slot, "error" if call.broken else "ok")

        headers = response_headers(upstream.headers.multi_items(), (self.base, self.public))
        # Not direct_passthrough: werkzeug then wraps the body so the server's close() reaches
        # `close`, whether or not the body was read (a client gone, a HEAD).
        response = Response(chunks(), status=upstream.status_code, headers=headers)
        response.call_on_close(close)
        return response

    def _finish(self, call: Call, slot: Slot, outcome: str) -> None:
        """Release the slot, count the call and audit how it ended (never its bodies)."""
        if call.finished:
            return
        call.finished = True
        self.governor.release(slot)
        method = call.egress.method_id
        metrics.PROXY_CALLS.labels(method=method, outcome=outcome).inc()
        metrics.PROXY_BYTES.labels(direction="up").inc(call.bytes_up)
        metrics.PROXY_BYTES.labels(direction="down").inc(call.bytes_down)
        handout = call.handout
        now = handout.tokens.clock()
        details = {"method": method, "status": call.status, "bytes_up": call.bytes_up,
                   "bytes_down": call.bytes_down,
                   "latency_ms": round((time.monotonic() - call.started) * 1000, 1),
                   "attempts": call.attempts}
        held = call.turn.held  # a call never waits for a second turn while holding one
        call.turn.take()
        try:
            handout.db.run_hot(lambda conn: audit.insert_event(
                conn, now=now, action="proxy.result", tenant_id=handout.client.tenant_id,
                actor_type="client", actor_id=handout.client.id, ip=handout.ip,
                outcome="ok" if outcome == "ok" else "error", reason=None if outcome == "ok"
                else outcome, subject_user_id=handout.user_id, details=details,
            ))
        except Exception:  # the call already went out with its row; never fail the answer now
            log.exception("proxy result not audited", extra={"event": "proxy_audit"})
        finally:
            if not held:
                call.turn.give()


def _reason(raw: bytes) -> str:
    try:
        errors = json.loads(raw)["error"]["errors"]
        return str(errors[0]["reason"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _retry_after(upstream: httpx.Response) -> float | None:
    value = upstream.headers.get("retry-after", "")
    return float(value) if value.isdigit() and 0 < int(value) <= 3600 else None


def get_proxy(app: Flask) -> Proxy:
    """Return the app's proxy, made on first use."""
    proxy: Proxy | None = app.extensions.get(EXTENSION)
    if proxy is None:
        proxy = app.extensions.setdefault(EXTENSION, Proxy(app))
    return proxy
