"""Sign in with Google: the round trip, membership and every refusal (DESIGN §6)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from broker.clock import utcnow
from broker.db import get_db
from broker.identity.sessions import digest
from broker.models import BrowserSession, OAuthTransaction, Policy, Tenant, User
from tests.conftest import Clock
from tests.factories import make_tenant
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import PUBLIC_URL, WebBrowser, query, reasons, text
from tests.plugins.emulator import EmulatorControls


def _user(app: Flask, email: str) -> User | None:
    with get_db(app).transaction(write=False) as session:
        return session.scalar(select(User).where(User.email == email))


def _start(browser: WebBrowser) -> str:
    """Start a sign-in and return Google's authorization URL."""
    response = browser.get("/auth/login")
    assert response.status_code == 302
    return str(response.headers["Location"])


def _callback_url(browser: WebBrowser, emulator: EmulatorControls, email: str) -> str:
    """Run the Google side of a sign-in and return the callback URL it redirects to."""
    emulator.settings(auto_consent=email)
    answer = browser.get(_start(browser))
    emulator.settings(auto_consent=None)
    assert answer.status_code == 302
    return str(answer.headers["Location"])


def test_landing_page_offers_sign_in(google_app: Flask, browser: WebBrowser) -> None:
    page = browser.get("/")
    assert page.status_code == 200
    assert "Sign in with Google" in text(page)


def test_authorization_request(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    url = _start(browser)
    params = query(url)
    assert url.startswith(emulator.url + "/o/oauth2/v2/auth?")
    assert params["redirect_uri"] == PUBLIC_URL + "/auth/callback"
    assert params["scope"] == "openid email profile"
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
    assert "code_verifier" not in params
    with get_db(browser.app).transaction(write=False) as session:
        stored = session.get(OAuthTransaction, digest(params["state"]))
        assert stored is not None and stored.purpose == "signin"
        assert params["state"] not in (stored.state_hash, stored.browser_binding_hash)
        assert stored.code_verifier and b"verifier" not in stored.code_verifier


def test_sign_in_creates_member_and_session(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls, clock: Clock
) -> None:
    callback = _callback_url(browser, emulator, "alice@acme.test")
    assert callback.startswith(PUBLIC_URL + "/auth/callback?")
    done = browser.get(callback)
    assert done.status_code == 303
    assert done.headers["Location"] == "/connections"
    cookie = next(h for h in done.headers.getlist("Set-Cookie") if h.startswith("broker_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    user = _user(browser.app, "alice@acme.test")
    assert user is not None and user.status == "active" and user.role == "member"
    assert user.last_login_at == clock.now and user.name == "Alice"
    with get_db(browser.app).transaction(write=False) as session:
        row = session.scalar(select(BrowserSession).where(BrowserSession.user_id == user.id))
        assert row is not None and row.token_hash == digest(value) and row.ip == "127.0.0.1"
    assert "alice@acme.test" in text(browser.open("/connections"))
    assert browser.get("/").headers["Location"].endswith("/connections")
    assert reasons(browser.app, "signin") == [None]


def test_every_sign_in_gets_a_new_session_id(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls, clock: Clock
) -> None:
    sign_in(browser, emulator, "alice@acme.test")
    first = browser.broker.get_cookie("broker_session", domain="127.0.0.1")
    assert first is not None
    # Signed in already: /auth/login starts nothing.
    assert browser.get("/auth/login").headers["Location"] == "/connections"
    clock.advance(minutes=31)
    sign_in(browser, emulator, "alice@acme.test")
    second = browser.broker.get_cookie("broker_session", domain="127.0.0.1")
    assert second is not None and second.value != first.value
    with get_db(browser.app).transaction(write=False) as session:
        ended = session.scalar(
            select(BrowserSession).where(BrowserSession.token_hash == digest(first.value))
        )
        assert ended is not None and ended.end_reason == "idle"


def test_invited_admin_is_bound_at_first_sign_in(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    account = emulator.add_account("admin@acme.test", hd="acme.test")
    sign_in(browser, emulator, "admin@acme.test")
    admin = _user(browser.app, "admin@acme.test")
    assert admin is not None and admin.role == "admin" and admin.status == "active"
    assert admin.google_sub == account["sub"]


def test_consumer_accounts_need_an_invitation(
    google_app: Flask, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    make_tenant(google_app, "open", domains=("open.test",), admin="boss@gmail.test",
                allow_consumer_accounts=True)
    make_tenant(google_app, "closed", domains=("closed.test",), admin="carol@gmail.test")
    for email in ("boss@gmail.test", "carol@gmail.test", "dave@gmail.test"):
        emulator.add_account(email)
    # Invited: a plain sign-in only offers the tenant; its own link joins it.
    assert "Choose an organization" in text(sign_in(browser, emulator, "boss@gmail.test"))
    assert _user(google_app, "boss@gmail.test").status == "invited"  # type: ignore[union-attr]
    emulator.settings(auto_consent="boss@gmail.test")
    assert browser.follow(browser.open("/auth/login?tenant=open")).status_code == 200
    emulator.settings(auto_consent=None)
    assert _user(google_app, "boss@gmail.test").status == "active"  # type: ignore[union-attr]
    for email in ("carol@gmail.test", "dave@gmail.test"):
        page = sign_in(WebBrowser(google_app), emulator, email)
        assert page.status_code == 403 and "not_invited" in text(page)
    assert reasons(google_app, "signin.refused") == ["choose_tenant", "not_invited", "not_invited"]


@pytest.mark.parametrize(
    ("email", "account", "reason"),
    [
        ("eve@other.test", {"hd": "other.test"}, "unknown_domain"),
        ("frank@acme.test", {"hd": "acme.test", "email_verified": False}, "email_unverified"),
    ],
)
def test_accounts_outside_any_tenant_are_refused(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls, email: str,
    account: dict[str, object], reason: str,
) -> None:
    emulator.add_account(email, **account)
    page = sign_in(browser, emulator, email)
    assert page.status_code == 403
    assert reason in text(page)
    assert reasons(browser.app, "signin.refused") == [reason]
    assert _user(browser.app, email) is None


def test_suspended_user_is_refused(
    acme: Tenant, signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    from broker.tenancy.users import set_status

    with get_db(signed_in.app).transaction() as session:
        user = session.scalar(select(User).where(User.email == "alice@acme.test"))
        assert user is not None
        set_status(session, user.tenant_id, user.id, "suspended", now=utcnow(), actor="test")
    assert signed_in.get("/connections").status_code == 302  # the session ended at once
    page = sign_in(signed_in, emulator, "alice@acme.test")
    assert page.status_code == 403 and "user_suspended" in text(page)
    assert reasons(signed_in.app, "signin.refused") == ["user_suspended"]


def test_sign_in_from_outside_login_ip_ranges_is_refused(
    acme: Tenant, emulator: EmulatorControls, google_app: Flask
) -> None:
    with get_db(google_app).transaction() as session:
        policy = session.get(Policy, acme.id)
        assert policy is not None
        policy.login_ip_ranges = ["10.0.0.0/8"]
    page = sign_in(WebBrowser(google_app, "192.0.2.7"), emulator, "alice@acme.test")
    assert page.status_code == 403 and "ip_not_allowed" in text(page)
    inside = sign_in(WebBrowser(google_app, "10.1.2.3"), emulator, "alice@acme.test")
    assert "My Gmail connection" in text(inside)
    assert reasons(google_app, "signin.refused") == ["ip_not_allowed"]


def test_denied_consent_is_refused(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    chooser = browser.get(_start(browser))
    consent = browser.google_page_click(chooser, "Continue", fill={"email": "alice@acme.test"})
    if "Cancel" in text(consent):
        consent = browser.google_page_click(consent, "Cancel")
    # Cancelling is a choice: a calm page that says nothing changed, and the way back.
    assert consent.status_code == 200 and "Nothing changed" in text(consent)
    assert "not signed in" in text(consent) and 'id="back" href="/"' in text(consent)
    assert 'class="card refusal' not in text(consent)
    assert reasons(browser.app, "signin.refused") == ["access_denied"]


def test_state_checks(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls, clock: Clock,
    google_app: Flask, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    callback = _callback_url(browser, emulator, "alice@acme.test")
    # Another browser presenting this browser's callback: login CSRF.
    assert "foreign_browser" in text(WebBrowser(google_app).get(callback))
    params = query(callback)
    forged = callback.replace(params["state"], "x" * 43)
    assert "bad_state" in text(browser.get(forged))
    assert "bad_state" in text(browser.get(callback + "&state=again"))
    assert browser.get(callback).status_code == 303
    replay = browser.get(callback)
    assert replay.status_code == 400 and "state_replayed" in text(replay)
    slow = WebBrowser(google_app)
    late = _callback_url(slow, emulator, "alice@acme.test")
    clock.advance(minutes=11)
    assert "state_expired" in text(slow.get(late))
    # A sign-in transaction names no tenant yet: its refusals are logged, never audited.
    assert reasons(google_app, "signin.refused") == []
    assert [r.reason for r in caplog.records if getattr(r, "event", "") == "callback_refused"] == [
        "foreign_browser", "bad_state", "bad_state", "state_replayed", "state_expired",
    ]


def test_wrong_response_issuer_is_refused(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    callback = _callback_url(browser, emulator, "alice@acme.test")
    iss = query(callback)["iss"]
    page = browser.get(callback.replace("iss=" + iss.replace(":", "%3A").replace("/", "%2F"),
                                        "iss=https%3A%2F%2Fevil.test"))
    assert page.status_code == 400 and "issuer_mismatch" in text(page)
    calls = emulator.calls()
    assert calls["token"]["authorization_code"] == 0  # refused before any code exchange


def test_local_next_only(acme: Tenant, browser: WebBrowser, emulator: EmulatorControls) -> None:
    emulator.settings(auto_consent="alice@acme.test")
    for target, landing in (("//evil.test/x", "/connections"), ("/connections", "/connections")):
        fresh = WebBrowser(browser.app)
        answer = fresh.get(f"/auth/login?next={target}")
        back = fresh.get(fresh.get(answer.headers["Location"]).headers["Location"])
        assert back.headers["Location"] == landing
    emulator.settings(auto_consent=None)


def test_google_not_configured_says_so(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    assert "not configured" in client.get("/").get_data(as_text=True)
    page = client.get("/auth/login")
    assert page.status_code == 503 and "google_not_configured" in page.get_data(as_text=True)


def test_unknown_tenant_id_is_never_trusted(google_app: Flask) -> None:
    page = WebBrowser(google_app).get(f"/auth/callback?state={uuid.uuid4()}&code=4/x")
    assert page.status_code == 400 and "bad_state" in text(page)
