"""Server-side sessions under policy: idle, absolute expiry, IP lock, sign-out, keep_connected."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.models import BrowserSession, Policy, Tenant
from tests.conftest import Clock
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import WebBrowser, events, query, text
from tests.plugins.emulator import EmulatorControls


def _policy(app: Flask, tenant: Tenant, **values: Any) -> None:
    with get_db(app).transaction() as session:
        policy = session.get(Policy, tenant.id)
        assert policy is not None
        for name, value in values.items():
            setattr(policy, name, value)


def _end_reasons(app: Flask) -> list[str | None]:
    with get_db(app).transaction(write=False) as session:
        return [s.end_reason for s in session.scalars(
            select(BrowserSession).order_by(BrowserSession.created_at)
        )]


def test_idle_timeout(signed_in: WebBrowser, clock: Clock) -> None:
    clock.advance(minutes=29)
    assert signed_in.get("/connections").status_code == 200
    clock.advance(minutes=29)
    assert signed_in.get("/connections").status_code == 200  # each visit counts as activity
    clock.advance(minutes=31)
    gone = signed_in.get("/connections")
    assert gone.status_code == 302 and gone.headers["Location"] == "/"
    assert 'broker_session=;' in " ".join(gone.headers.getlist("Set-Cookie"))
    assert "inactivity" in text(signed_in.open("/"))
    assert _end_reasons(signed_in.app) == ["idle"]


def test_absolute_expiry(signed_in: WebBrowser, clock: Clock) -> None:
    for _ in range(16):
        clock.advance(minutes=29)
        assert signed_in.get("/connections").status_code == 200
    clock.advance(minutes=29)  # 8 h 41 min after sign-in, never idle
    assert signed_in.get("/connections").status_code == 302
    assert "maximum length" in text(signed_in.open("/"))
    assert _end_reasons(signed_in.app) == ["expired"]


def test_session_locked_to_sign_in_ip(
    acme: Tenant, google_app: Flask, emulator: EmulatorControls
) -> None:
    _policy(google_app, acme, lock_session_to_ip=True)
    browser = WebBrowser(google_app, "10.0.0.1")
    sign_in(browser, emulator, "alice@acme.test")
    assert browser.get("/connections").status_code == 200
    browser.environ["REMOTE_ADDR"] = "10.0.0.2"
    assert browser.get("/connections").status_code == 302
    browser.environ["REMOTE_ADDR"] = "10.0.0.1"
    assert browser.get("/connections").status_code == 302  # ended for good
    assert _end_reasons(google_app) == ["policy"]


def test_sign_out_needs_csrf_and_ends_the_session(signed_in: WebBrowser) -> None:
    refused = signed_in.post("/auth/logout")
    assert refused.status_code == 403 and "csrf_failed" in text(refused)
    assert signed_in.get("/connections").status_code == 200
    done = signed_in.post("/auth/logout", {"csrf_token": signed_in.csrf()})
    assert done.status_code == 303 and done.headers["Location"] == "/"
    assert signed_in.get("/connections").status_code == 302
    assert _end_reasons(signed_in.app) == ["logout"]
    assert len(events(signed_in.app, "signout")) == 1


def test_keep_connected_resumes_a_timed_out_session_silently(
    acme: Tenant, signed_in: WebBrowser, clock: Clock
) -> None:
    _policy(signed_in.app, acme, keep_connected=True)
    clock.advance(minutes=31)
    first = signed_in.get("/connections")
    assert first.headers["Location"].startswith("/auth/login")
    to_google = signed_in.get(first.headers["Location"])
    params = query(to_google.headers["Location"])
    assert params["prompt"] == "none" and params["login_hint"] == "alice@acme.test"
    page = signed_in.follow(to_google)
    assert page.status_code == 200 and "My Gmail connection" in text(page)
    assert _end_reasons(signed_in.app) == ["idle", None]
    assert [e.details["silent"] for e in events(signed_in.app, "signin")] == [False, True]


def test_keep_connected_falls_back_to_sign_in_page(
    acme: Tenant, signed_in: WebBrowser, clock: Clock
) -> None:
    _policy(signed_in.app, acme, keep_connected=True)
    signed_in.google.cookies.clear()  # signed out of Google meanwhile
    clock.advance(hours=9)
    page = signed_in.open("/connections")
    assert page.status_code == 200 and "Sign in with Google" in text(page)
    assert "sign in again" in text(page)
    assert signed_in.broker.get_cookie("broker_session", domain="127.0.0.1") is None
    assert signed_in.get("/").status_code == 200  # no loop


def test_keep_connected_never_resumes_after_sign_out(
    acme: Tenant, signed_in: WebBrowser
) -> None:
    _policy(signed_in.app, acme, keep_connected=True)
    signed_in.post("/auth/logout", {"csrf_token": signed_in.csrf()})
    assert signed_in.get("/connections").headers["Location"] == "/"
