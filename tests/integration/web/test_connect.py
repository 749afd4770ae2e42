"""Connect Gmail, the connection page, and disconnect (DESIGN §6)."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from sqlalchemy import select, update

from broker.db import get_db
from broker.keys.extension import get_keys
from broker.models import AccessToken, Connection, Policy, Tenant
from broker.scopes import scope_key
from tests.conftest import Clock
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import (
    LABELS,
    READONLY,
    SEND,
    WebBrowser,
    query,
    reasons,
    text,
)
from tests.plugins.emulator import EmulatorControls


def _connection(app: Flask) -> tuple[Connection, list[AccessToken], str | None]:
    with get_db(app).transaction(write=False) as session:
        connection = session.scalar(select(Connection))
        assert connection is not None
        tokens = list(session.scalars(select(AccessToken)))
        refresh = None
        if connection.refresh_token is not None:
            refresh = get_keys(app).open(
                session, connection.tenant_id, connection.id, "refresh_token",
                connection.refresh_token,
            ).decode()
        return connection, tokens, refresh


def _connect(browser: WebBrowser, *scopes: str) -> Any:
    """Start a connect; return Google's authorization URL."""
    answer = browser.get("/connections/connect?" + "&".join(f"scope={s}" for s in scopes))
    assert answer.status_code == 302, text(answer)[:300]
    return answer.headers["Location"]


def _connect_auto(browser: WebBrowser, emulator: EmulatorControls, *scopes: str) -> Any:
    emulator.settings(auto_consent=True)
    try:
        return browser.open(_connect(browser, *scopes))
    finally:
        emulator.settings(auto_consent=None)


def test_connect_all_scopes(signed_in: WebBrowser, emulator: EmulatorControls) -> None:
    url = _connect(signed_in, READONLY, SEND, "gmail.labels")
    params = query(url)
    assert params["scope"].split() == ["openid", "email", LABELS, READONLY, SEND]
    assert params["access_type"] == "offline" and params["include_granted_scopes"] == "true"
    assert params["prompt"] == "consent" and params["login_hint"] == "alice@acme.test"
    assert params["redirect_uri"].endswith("/connections/callback")
    emulator.settings(auto_consent=True)
    back = signed_in.get(signed_in.get(url).headers["Location"])
    emulator.settings(auto_consent=None)
    assert back.status_code == 303 and back.headers["Location"] == "/connections"
    page = text(signed_in.open("/connections"))
    assert "Gmail is connected." in page and "Not granted" not in page
    assert "Send email on your behalf" in page and "Active" in page
    connection, tokens, refresh = _connection(signed_in.app)
    assert connection.status == "active" and refresh and refresh.startswith("1//")
    assert {READONLY, SEND, LABELS} <= set(connection.granted_scopes)
    assert [t.scope_key for t in tokens] == [scope_key(connection.granted_scopes)]
    assert b"ya29" not in tokens[0].token
    assert reasons(signed_in.app, "connection.connect") == [None]


def test_partial_grant_is_reported_and_later_additions_keep_the_rest(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    consent = signed_in.get(_connect(signed_in, READONLY, SEND))
    if "Continue" in text(consent) and "Allow" not in text(consent):
        consent = signed_in.google_page_click(consent, "alice@acme.test")
    page = signed_in.google_page_click(consent, "Allow", untick=(SEND,))
    assert page.status_code == 200
    assert "Not granted: Send email on your behalf (gmail.send)" in text(page)
    connection, _, first_refresh = _connection(signed_in.app)
    assert READONLY in connection.granted_scopes and SEND not in connection.granted_scopes
    # Asking for one more later: no forced consent (a live token exists), the others stay.
    url = _connect(signed_in, LABELS)
    assert "prompt" not in query(url)
    emulator.settings(auto_consent=True)
    signed_in.open(url)
    emulator.settings(auto_consent=None)
    connection, _, refresh = _connection(signed_in.app)
    assert {READONLY, LABELS} <= set(connection.granted_scopes)
    assert refresh is not None


def test_no_refresh_token_keeps_the_stored_one(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_auto(signed_in, emulator, READONLY)
    _, _, before = _connection(signed_in.app)
    calls = emulator.calls()["token"]["authorization_code"]
    page = signed_in.open(_connect(signed_in, READONLY))  # already granted: no consent shown
    assert "Gmail is connected." in text(page)
    assert emulator.calls()["token"]["authorization_code"] == calls + 1
    connection, tokens, after = _connection(signed_in.app)
    assert after == before and connection.version == 2 and len(tokens) == 1


def test_retries_once_with_consent_when_no_refresh_token_is_live(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_auto(signed_in, emulator, READONLY)
    url = _connect(signed_in, READONLY)
    assert "prompt" not in query(url)
    with get_db(signed_in.app).transaction() as session:
        session.execute(update(Connection).values(status="needs_reauth"))
    back = signed_in.get(signed_in.get(url).headers["Location"])
    assert back.status_code == 303
    assert query(back.headers["Location"])["prompt"] == "consent"
    emulator.settings(auto_consent=True)
    page = signed_in.follow(back)
    emulator.settings(auto_consent=None)
    assert "Gmail is connected." in text(page)
    assert _connection(signed_in.app)[0].status == "active"


def test_connecting_another_persons_mailbox_is_refused(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    emulator.add_account("bob@acme.test", hd="acme.test")
    emulator.settings(auto_consent="bob@acme.test")
    page = signed_in.open(_connect(signed_in, READONLY))
    emulator.settings(auto_consent=None)
    assert "wrong_account" in text(page), re.findall(r"id=.reason.>(\w+)", text(page))
    assert page.status_code == 403
    assert reasons(signed_in.app, "connect.refused") == ["wrong_account"]
    with get_db(signed_in.app).transaction(write=False) as session:
        assert session.scalar(select(Connection)) is None


def test_only_offered_scopes(acme: Tenant, signed_in: WebBrowser) -> None:
    with get_db(signed_in.app).transaction() as session:
        session.execute(update(Policy).values(offered_scopes=[READONLY]))
    page = signed_in.get("/connections/connect?scope=gmail.send")
    assert page.status_code == 400 and "scope_not_offered" in text(page)
    assert "scope_not_offered" in text(signed_in.get("/connections/connect?scope=nonsense"))
    assert signed_in.get("/connections/connect?scope=gmail.readonly").status_code == 302
    empty = signed_in.get("/connections/connect")
    assert empty.status_code == 303


def test_connect_needs_a_session(google_app: Flask, acme: Tenant) -> None:
    browser = WebBrowser(google_app)
    assert browser.get("/connections/connect?scope=gmail.readonly").headers["Location"] == "/"
    page = browser.get("/connections/callback?state=x&code=y")
    assert page.status_code == 403 and "signin_required" in text(page)


def test_connect_callback_from_another_session_is_refused(
    signed_in: WebBrowser, emulator: EmulatorControls, google_app: Flask
) -> None:
    emulator.settings(auto_consent=True)
    callback = signed_in.get(_connect(signed_in, READONLY)).headers["Location"]
    other = WebBrowser(google_app)
    sign_in(other, emulator, "alice@acme.test")
    page = other.get(callback)
    assert "foreign_browser" in text(page)
    assert signed_in.get(callback).status_code == 303  # a foreign attempt burns nothing
    # Reloading the callback once connected: back to the page with a notice, still audited.
    replay = signed_in.get(callback)
    assert replay.status_code == 303 and replay.headers["Location"] == "/connections"
    page = signed_in.get("/connections")
    assert "Gmail is already connected" in text(page) and "flash-info" in text(page)
    assert reasons(google_app, "connect.refused")[-1] == "state_replayed"


def test_needs_reauth_page_offers_reconnect(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_auto(signed_in, emulator, READONLY)
    with get_db(signed_in.app).transaction() as session:
        session.execute(
            update(Connection).values(status="needs_reauth", status_reason="revoked_or_expired")
        )
    page = text(signed_in.get("/connections"))
    assert "Needs re-consent: access was revoked at Google or expired" in page
    assert 'id="reconnect"' in page


def test_disconnect_revokes_and_erases(signed_in: WebBrowser, emulator: EmulatorControls) -> None:
    _connect_auto(signed_in, emulator, READONLY)
    assert signed_in.get("/connections/disconnect").status_code == 200  # the confirmation
    assert signed_in.post("/connections/disconnect").status_code == 403  # no CSRF token
    before = emulator.calls()["revoke"]
    done = signed_in.post("/connections/disconnect", {"csrf_token": signed_in.csrf()})
    assert done.status_code == 303
    assert emulator.calls()["revoke"] == before + 1
    connection, tokens, refresh = _connection(signed_in.app)
    assert connection.status == "revoked" and refresh is None and tokens == []
    assert connection.revocation_pending is False
    assert "revoked at Google" in text(signed_in.open("/connections"))
    assert reasons(signed_in.app, "connection.revoke") == ["disconnected"]


def test_disconnect_erases_even_when_revocation_fails(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_auto(signed_in, emulator, READONLY)
    emulator.fault("revoke", status=503, count=-1)
    signed_in.post("/connections/disconnect", {"csrf_token": signed_in.csrf()})
    connection, tokens, refresh = _connection(signed_in.app)
    # The sealed refresh token stays only so the worker can retry the revocation.
    assert connection.status == "revoked" and tokens == [] and refresh is not None
    assert connection.revocation_pending is True
    assert "keep trying" in text(signed_in.open("/connections"))


def test_connect_and_disconnect_queue_signed_webhooks(
    acme: Tenant, signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    from broker import webhooks as webhook_admin
    from broker.models import WebhookDelivery

    app = signed_in.app
    with get_db(app).transaction() as session:
        webhook_admin.add(
            session, get_keys(app), acme.id, url="https://hooks.acme.test/broker",
            events=["connection.created", "connection.revoked"], allow_private=False,
            actor="test",
        )
    _connect_auto(signed_in, emulator, READONLY)
    signed_in.post("/connections/disconnect", {"csrf_token": signed_in.csrf()})
    with get_db(app).transaction(write=False) as session:
        events = [d.event for d in session.scalars(
            select(WebhookDelivery).order_by(WebhookDelivery.created_at))]
    assert events == ["connection.created", "connection.revoked"]


def test_reconnecting_after_a_disconnect_starts_the_history_afresh(
    signed_in: WebBrowser, emulator: EmulatorControls, clock: Clock
) -> None:
    app = signed_in.app
    _connect_auto(signed_in, emulator, READONLY)
    first = _connection(app)[0].created_at
    assert first == clock.now  # the broker's clock, as every other time on the page
    # Minutes, not days: the browser session must stay valid throughout.
    used = clock.advance(minutes=10)
    with get_db(app).transaction() as session:
        session.execute(update(Connection).values(
            last_used_at=used, last_refresh_at=used, rejected_refresh_at=used))
    clock.advance(minutes=10)
    signed_in.post("/connections/disconnect", {"csrf_token": signed_in.csrf()})
    again = clock.advance(minutes=10)
    _connect_auto(signed_in, emulator, READONLY)
    connection, _, _ = _connection(app)
    assert connection.status == "active" and connection.created_at == again != first
    assert connection.last_used_at is None and connection.last_refresh_at is None
    assert connection.rejected_refresh_at is None
    page = text(signed_in.open("/connections"))
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page))
    assert facts["Last refresh"] == "never" and facts["Last used by a job"] == "never"
    assert facts["Connected since"] == again.strftime("%Y-%m-%d %H:%M:%SZ")


def test_reconnecting_a_live_grant_keeps_its_history(
    signed_in: WebBrowser, emulator: EmulatorControls, clock: Clock
) -> None:
    app = signed_in.app
    _connect_auto(signed_in, emulator, READONLY)
    first = _connection(app)[0].created_at
    used = clock.advance(minutes=10)
    with get_db(app).transaction() as session:
        session.execute(update(Connection).values(last_used_at=used))
    clock.advance(minutes=10)
    _connect_auto(signed_in, emulator, READONLY, SEND)  # adding a scope is no new grant
    connection, _, _ = _connection(app)
    assert connection.created_at == first and connection.last_used_at == used
