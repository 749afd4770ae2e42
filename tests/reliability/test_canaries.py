"""Canaries: known secrets planted in a real run never show up where they must not (SECURITY.md,
"Logging and audit"; DESIGN §11).

The secrets are the real ones of a browser-less sign-in and connect through the emulator and of
hand-outs (refresh tokens, access tokens, id_tokens, authorization codes, PKCE verifiers, the API
client secret, the session and binding cookies) plus configured ones (the Google client secret,
the master key, the metrics token). With every logger at DEBUG, none may appear — raw,
URL-encoded, base64 (standard or URL-safe, padded or not) or JSON-escaped — in the logs, any
response's body or headers, the audit rows, /metrics or a dump of the database. The only
exceptions: the access token in a 200 `/api/v1/token` body, and the cookies in `Set-Cookie`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import secrets
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.engine import make_url

import broker.logging as broker_logging
from broker.db import get_db
from broker.google.client import Google, TokenResponse
from broker.identity.sessions import BINDING_COOKIE, SESSION_COOKIE
from broker.keys.sealed import format_key_line, new_key
from broker.models import AuditEvent, Tenant
from broker.tenancy import clients
from tests.factories import make_tenant
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import PUBLIC_URL, READONLY, SEND, WebBrowser
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import basic

ADMIN = "admin@canary.test"
TOKEN_PATH = "/api/v1/token"
ACCESS = "access token"
COOKIE = "cookie"


# -- the canaries and their encodings ------------------------------------------------------------


def forms(value: str) -> dict[str, str]:
    """Return a value in every form a leak could take: raw, URL-encoded, base64, JSON-escaped."""
    raw = value.encode()
    std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    return {
        "raw": value, "url-encoded": urllib.parse.quote(value, safe=""),
        "base64": std, "base64 unpadded": std.rstrip("="),
        "urlsafe base64": url, "urlsafe base64 unpadded": url.rstrip("="),
        "json-escaped": json.dumps(value)[1:-1],
    }


@dataclass
class Canaries:
    """Secrets by kind, each to be looked for in all its forms."""

    values: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, value: str | None) -> None:
        """Plant one value (ignoring none)."""
        if value:
            assert len(value) >= 16, (kind, "too short to be a meaningful canary")
            self.values.setdefault(kind, set()).add(value)

    def leaks(self, where: str, text: str, *, allowed: Iterable[str] = ()) -> list[str]:
        """Describe every canary found in `text`, but those of the allowed kinds."""
        found = []
        for kind, values in self.values.items():
            if kind in allowed:
                continue
            for value in values:
                for name, form in forms(value).items():
                    if form in text:
                        found.append(f"{kind} ({name}, {value[:8]}…) in {where}")
        return found


# -- what the broker says: responses, logs ---------------------------------------------------------


@dataclass
class Exchange:
    """One response of the broker, as it left the WSGI app."""

    method: str
    path: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Recorder:
    """WSGI middleware keeping every response of the app it wraps."""

    def __init__(self, app: Flask) -> None:
        self.inner = app.wsgi_app
        self.exchanges: list[Exchange] = []
        app.wsgi_app = self  # type: ignore[method-assign]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Serve the request, keeping the status, headers and whole body."""
        seen: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            seen["status"], seen["headers"] = int(status.split()[0]), list(headers)
            return start_response(status, headers, *args)

        chunks = self.inner(environ, keep)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        self.exchanges.append(Exchange(
            environ["REQUEST_METHOD"], environ["PATH_INFO"], seen["status"], seen["headers"],
            body,
        ))
        return [body]


@contextmanager
def debug_logs() -> Iterator[io.StringIO]:
    """Configure the broker's logging at DEBUG and capture its JSON lines; restore afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    levels = {name: logging.getLogger(name).level for name in ("", "authlib", "alembic")}
    captured = io.StringIO()
    broker_logging.configure("DEBUG")
    json_handlers = [h for h in root.handlers
                     if isinstance(h.formatter, broker_logging.JsonFormatter)]
    assert json_handlers, "configure() installed no JSON handler"
    streams = {h: h.setStream(captured) for h in json_handlers  # type: ignore[attr-defined]
               if isinstance(h, logging.StreamHandler)}
    # Every logger at DEBUG: those with a level of their own too (authlib stays capped at INFO
    # by design, DESIGN §11).
    raised = {}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG \
                and not name.startswith(("authlib", "alembic")):
            raised[name] = logger.level
            logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        for name, level in raised.items():
            logging.getLogger(name).setLevel(level)
        for handler, stream in streams.items():
            handler.setStream(stream)  # type: ignore[attr-defined]
        root.handlers[:] = handlers
        for handler in handlers:
            handler.filters[:] = filters[handler]
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """The broker under test and what the run planted and recorded."""

    app: Flask
    emulator: EmulatorControls
    canaries: Canaries
    recorder: Recorder
    browser: WebBrowser


def _spy_on_google(monkeypatch: pytest.MonkeyPatch, canaries: Canaries) -> None:
    """Keep every code, verifier and token passing through the broker's Google client."""
    exchange, refresh = Google.exchange_code, Google.refresh

    def planted(answer: TokenResponse) -> TokenResponse:
        canaries.add(ACCESS, answer.access_token)
        canaries.add("refresh token", answer.refresh_token)
        canaries.add("id_token", answer.id_token)
        return answer

    def exchange_code(self: Google, code: str, *, code_verifier: str,
                      redirect_uri: str) -> TokenResponse:
        canaries.add("authorization code", code)
        canaries.add("PKCE verifier", code_verifier)
        return planted(exchange(self, code, code_verifier=code_verifier,
                                redirect_uri=redirect_uri))

    def refreshed(self: Google, refresh_token: str, scopes: list[str] | None = None,
                  timeout: float | None = None) -> TokenResponse:
        canaries.add("refresh token", refresh_token)
        return planted(refresh(self, refresh_token, scopes, timeout))

    monkeypatch.setattr(Google, "exchange_code", exchange_code)
    monkeypatch.setattr(Google, "refresh", refreshed)


def _setup(make_app: Callable[..., Flask], emulator: EmulatorControls,
           monkeypatch: pytest.MonkeyPatch) -> Run:
    """Build a broker with planted configured secrets, a tenant and its admin's account."""
    canaries = Canaries()
    client_id = f"canary-{secrets.token_hex(4)}.apps.googleusercontent.com"
    google_secret = "GOCSPX-" + secrets.token_urlsafe(21)
    master = new_key()
    metrics_token = secrets.token_urlsafe(24)
    canaries.add("Google client secret", google_secret)
    canaries.add("master key", base64.b64encode(master).decode())
    canaries.add("master key", base64.urlsafe_b64encode(master).decode().rstrip("="))
    canaries.add("master key", master.hex())
    canaries.add("metrics token", metrics_token)
    emulator.add_client(client_id, google_secret,
                        [PUBLIC_URL + "/auth/callback", PUBLIC_URL + "/connections/callback"])
    app = make_app(
        GOOGLE_CLIENT_ID=client_id, GOOGLE_CLIENT_SECRET=google_secret,
        GOOGLE_DISCOVERY_URL=emulator.url + "/.well-known/openid-configuration",
        GMAIL_API_URL=emulator.url, PUBLIC_URL=PUBLIC_URL,
        MASTER_KEYS=format_key_line("canary-1", master), METRICS_TOKEN=metrics_token,
        REJECTED_TOKEN_COOLDOWN=0,
    )
    app.config["BROKER_CANONICAL_HOST"] = True
    make_tenant(app, "canary", domains=("canary.test",), admin=ADMIN)
    emulator.add_account(ADMIN, hd="canary.test", name="Ada Admin")
    _spy_on_google(monkeypatch, canaries)
    return Run(app, emulator, canaries, Recorder(app), WebBrowser(app))


def _callback_urls(browser: WebBrowser) -> list[str]:
    return [u for u in browser.history if "/callback?" in u]


def _web_flows(run: Run) -> None:
    """Sign in, replay the callback, connect Gmail; plant the codes and cookies seen."""
    browser, canaries = run.browser, run.canaries
    landed = sign_in(browser, run.emulator, ADMIN)
    assert landed.status_code == 200, landed.get_data(as_text=True)[:300]
    signin_callback = _callback_urls(browser)[-1]
    session = browser.broker.get_cookie(SESSION_COOKIE, domain="127.0.0.1")
    assert session is not None
    canaries.add(COOKIE, session.value)
    for exchange in run.recorder.exchanges:  # the binding cookie lives only during sign-in
        for name, value in exchange.headers:
            cookie = re.match(rf"({BINDING_COOKIE}|{SESSION_COOKIE})=([^;]+)", value)
            if name.lower() == "set-cookie" and cookie:
                canaries.add(COOKIE, cookie.group(2))
    for url in _callback_urls(browser):
        canaries.add("authorization code", urllib.parse.parse_qs(
            urllib.parse.urlsplit(url).query)["code"][0])
    # A replayed callback (its code and state used up) is refused without echoing either.
    assert browser.get(signin_callback).status_code >= 400

    run.emulator.settings(auto_consent=True)
    try:
        started = browser.get(f"/connections/connect?scope={READONLY}&scope={SEND}")
        assert started.status_code == 302
        page = browser.open(started.headers["Location"])
    finally:
        run.emulator.settings(auto_consent=None)
    assert "Gmail is connected." in page.get_data(as_text=True)
    for url in _callback_urls(browser):
        canaries.add("authorization code", urllib.parse.parse_qs(
            urllib.parse.urlsplit(url).query)["code"][0])


def _hand_outs(run: Run) -> None:
    """Hand out tokens (one forced refresh) and have several refused."""
    with get_db(run.app).transaction() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == "canary"))
        assert tenant is not None
        issued = clients.create_client(session, tenant, name="job", scopes=[READONLY])
    run.canaries.add("API client secret", issued.client_secret)
    api = run.app.test_client()
    auth = {"Authorization": basic(issued.client_id, issued.client_secret)}

    def post(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return api.post(TOKEN_PATH, json=body, headers=headers or auth,
                        environ_base={"REMOTE_ADDR": "203.0.113.9"})

    first = post({"user": ADMIN})
    assert first.status_code == 200, first.json
    token = first.json["access_token"]
    assert post({"user": ADMIN}).json["access_token"] == token
    forced = post({"user": ADMIN, "rejected_token": token})  # the client says it is dead
    assert forced.status_code == 200, forced.json
    assert forced.json["access_token"] != token
    refusals = [
        post({"user": ADMIN}, {"Authorization": basic(issued.client_id,
                                                      issued.client_secret + "x")}),
        post({"user": ADMIN, "scopes": [SEND]}),
        post({"user": "nobody@canary.test", "rejected_token": token}),
        post({"user": ADMIN, "rejected_token": forced.json["access_token"], "min_ttl": "x"}),
        post({"user": ADMIN, "rejected_token": token + "\x00" * 3000}),
    ]
    assert [r.status_code for r in refusals] == [401, 403, 404, 400, 400], [
        (r.status_code, r.json) for r in refusals]
    _proxied(run, api, auth)


def _proxied(run: Run, api: Any, auth: dict[str, str]) -> None:
    """Call Gmail through the broker: by proxy token, by client credentials, after a 401."""
    issued = api.post("/api/v1/proxy/token", json={"user": ADMIN}, headers=auth)
    assert issued.status_code == 200, issued.json
    run.canaries.add("proxy token", issued.json["proxy_token"])
    bearer = {"Authorization": "Bearer " + issued.json["proxy_token"]}
    # buffered: the test client closes the answer, which a server does when it is sent.
    assert api.get("/proxy/gmail/v1/users/me/profile", headers=bearer,
                   buffered=True).status_code == 200
    assert api.get(f"/proxy/gmail/v1/users/{ADMIN}/profile", headers=auth,
                   buffered=True).status_code == 200
    run.emulator.expire(ADMIN)  # Gmail answers 401: the broker refreshes and sends once more
    again = api.get("/proxy/gmail/v1/users/me/profile", headers=bearer, buffered=True)
    assert again.status_code == 200, again.data
    denied = api.post("/proxy/gmail/v1/users/me/messages/send", json={"raw": "x"},
                      headers=bearer)
    assert denied.status_code == 403 and denied.json["error"] == "method_not_allowed"


def _disconnect_and_read(run: Run, metrics_token: str) -> list[str]:
    """Disconnect, then read /metrics and the admin audit page and CSV; return their bodies."""
    browser = run.browser
    done = browser.post("/connections/disconnect",
                        {"csrf_token": browser.csrf("/connections/disconnect")})
    assert done.status_code == 303
    metrics = run.app.test_client().get(
        "/metrics", headers={"Authorization": "Bearer " + metrics_token})
    assert metrics.status_code == 200
    audit = browser.get("/admin/audit")
    csv = browser.get("/admin/audit/export.csv")
    assert audit.status_code == 200 and csv.status_code == 200
    body = csv.get_data(as_text=True)
    for action in ("signin", "connection.connect", "token.handout", "token.refresh",
                   "proxy.token", "proxy.call", "proxy.result"):
        assert action in body, action
    return [metrics.get_data(as_text=True), audit.get_data(as_text=True), body]


def _audit_rows(app: Flask) -> str:
    """Return every column of every audit row, as text and as JSON."""
    with get_db(app).transaction(write=False) as session:
        events = list(session.scalars(select(AuditEvent)))
        rows = [{c.key: getattr(e, c.key) for c in AuditEvent.__mapper__.column_attrs}
                for e in events]
    assert len(rows) >= 8
    return "\n".join(repr(r) + json.dumps(r, default=str) for r in rows)


def _database_dump(app: Flask) -> str:
    """Dump the whole database: pg_dump on PostgreSQL, iterdump on SQLite."""
    url = make_url(app.config["BROKER"].database_url)
    if url.get_backend_name() == "postgresql":
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return subprocess.run(["pg_dump", "--no-owner", plain], check=True, capture_output=True,
                              text=True, timeout=60).stdout
    assert url.database
    with sqlite3.connect(url.database) as conn:
        return "\n".join(conn.iterdump())


def _response_leaks(run: Run) -> list[str]:
    leaks: list[str] = []
    for n, ex in enumerate(run.recorder.exchanges):
        where = f"response {n} ({ex.method} {ex.path} {ex.status})"
        handed_out = ex.path == TOKEN_PATH and ex.status == 200
        proxy_token = ex.path == "/api/v1/proxy/token" and ex.status == 200
        text = ex.body.decode("utf-8", "replace")
        allowed = [ACCESS] if handed_out else ["proxy token"] if proxy_token else []
        leaks += run.canaries.leaks(where + " body", text, allowed=allowed)
        for name, value in ex.headers:
            cookie = [COOKIE] if name.lower() == "set-cookie" else []
            leaks += run.canaries.leaks(f"{where} header {name}", value, allowed=cookie)
    return leaks


def test_no_canary_leaks_anywhere(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    run = _setup(make_app, emulator, monkeypatch)
    caplog.set_level(logging.DEBUG)
    with debug_logs() as captured:
        _web_flows(run)
        _hand_outs(run)
        outputs = _disconnect_and_read(run, next(iter(run.canaries.values["metrics token"])))
        logs = captured.getvalue()
    canaries = run.canaries
    # The run planted what it should: every kind, several tokens, codes and verifiers.
    assert set(canaries.values) >= {
        ACCESS, "refresh token", "id_token", "authorization code", "PKCE verifier",
        "API client secret", COOKIE, "Google client secret", "master key", "metrics token",
    }, sorted(canaries.values)
    assert len(canaries.values[ACCESS]) >= 4 and len(canaries.values["PKCE verifier"]) == 2
    assert re.search(r'"level": "DEBUG"', logs), "no DEBUG line was logged"
    assert len(run.recorder.exchanges) >= 15

    dump = _database_dump(run.app)
    assert "refresh_lease_owner" in dump and ADMIN in dump, "the dump holds no data"
    record_text = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {json.dumps(r.__dict__, default=str)}"
        for r in caplog.records)
    leaks = (
        canaries.leaks("the JSON log", logs)
        + canaries.leaks("caplog", caplog.text + "\n" + record_text)
        + _response_leaks(run)
        + canaries.leaks("the audit rows", _audit_rows(run.app))
        + canaries.leaks("/metrics", outputs[0])
        + canaries.leaks("the admin audit page", outputs[1] + outputs[2])
        + canaries.leaks("the database dump", dump)
    )
    assert not leaks, "\n".join(leaks)
    print(f"\ncanaries: {sum(map(len, canaries.values.values()))} values of "
          f"{len(canaries.values)} kinds, {len(run.recorder.exchanges)} responses, "
          f"{logs.count(chr(10))} JSON log lines, {len(caplog.records)} records checked")
