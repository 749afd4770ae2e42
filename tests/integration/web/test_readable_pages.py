"""Pages people read: calm cancels, named scopes, least-privilege ticks, favicon, flash kinds."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import update

from broker.db import get_db
from broker.models import Policy, Tenant
from broker.tenancy import clients
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import (
    LABELS,
    READONLY,
    SEND,
    WebBrowser,
    reasons,
    text,
)
from tests.plugins.emulator import EmulatorControls

TICKED = re.compile(r'<input type="checkbox" name="scope" value="([^"]+)" checked>')


def _client(app: Flask, tenant: Tenant, name: str, scopes: list[str], *,
            disabled: bool = False) -> None:
    with get_db(app).transaction() as session:
        row = session.get(Tenant, tenant.id)
        assert row is not None
        issued = clients.create_client(session, row, name=name, scopes=scopes)
        if disabled:
            clients.disable_client(session, issued.client_id)


def test_cancelling_a_connect_at_google_changes_nothing_and_leads_back(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    consent = signed_in.get(signed_in.get(f"/connections/connect?scope={READONLY}")
                            .headers["Location"])
    page = signed_in.google_page_click(consent, "Cancel")
    body = text(page)
    assert page.status_code == 200 and "Nothing changed" in body
    assert "connection is as it was" in body
    assert 'id="back" href="/connections"' in body
    # The code is there for support, small and after the words.
    assert body.index("Nothing changed") < body.index('class="support"') < body.index(
        "access_denied")
    assert reasons(signed_in.app, "connect.refused") == ["access_denied"]


def test_the_bad_scope_page_names_the_scope(acme: Tenant, signed_in: WebBrowser) -> None:
    with get_db(signed_in.app).transaction() as session:
        session.execute(update(Policy).values(offered_scopes=[READONLY]))
    page = signed_in.get(f"/connections/connect?scope=gmail.readonly&scope={SEND}")
    body = text(page)
    assert page.status_code == 400
    listed = body[body.index('id="not-offered"'):]
    listed = listed[: listed.index("</ul>")]
    assert "<code>gmail.send</code>" in listed and "Send email on your behalf" in listed
    assert "gmail.readonly" not in listed
    nonsense = text(signed_in.get("/connections/connect?scope=gmail.fly%3Cb%3E"))
    assert "<code>gmail.fly&lt;b&gt;</code>" in nonsense
    # Plain words first; the reason code follows, small, for support.
    assert body.index("That access is not offered") < body.index('id="reason"')
    assert 'class="support"' in body


def test_error_pages_put_words_before_codes(google_app: Flask) -> None:
    body = text(WebBrowser(google_app).get("/nowhere"))
    assert body.index("There is nothing at this address.") < body.index("error 404")
    assert 'id="back" href="/"' in body


def test_only_scopes_a_job_uses_are_pre_ticked(
    acme: Tenant, signed_in: WebBrowser
) -> None:
    app = signed_in.app
    body = text(signed_in.get("/connections"))
    assert TICKED.findall(body) == []  # no job yet: nothing is asked for by default
    _client(app, acme, "reader", [READONLY])
    _client(app, acme, "old-sender", [SEND], disabled=True)
    body = text(signed_in.get("/connections"))
    assert TICKED.findall(body) == [READONLY]
    assert 'id="unused-note"' in body
    send = body[body.index(f'value="{SEND}"'):]
    assert send.index("No job of your organization uses this") < send.index("</li>")
    read = body[body.index(f'value="{READONLY}"'):]
    assert "No job" not in read[: read.index("</li>")]
    _client(app, acme, "labeller", [LABELS, READONLY])
    assert sorted(TICKED.findall(text(signed_in.get("/connections")))) == [LABELS, READONLY]


def test_reloading_a_finished_connect_callback_shows_the_connection(
    acme: Tenant, signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    emulator.settings(auto_consent=True)
    try:
        callback = signed_in.get(signed_in.get(f"/connections/connect?scope={READONLY}")
                                 .headers["Location"]).headers["Location"]
    finally:
        emulator.settings(auto_consent=None)
    assert signed_in.get(callback).status_code == 303
    assert "Gmail is connected." in text(signed_in.get("/connections"))
    again = signed_in.get(callback)
    assert again.status_code == 303 and again.headers["Location"] == "/connections"
    page = text(signed_in.get("/connections"))
    assert 'class="flash flash-info"' in page and "already connected" in page


def test_flash_messages_say_their_kind(
    acme: Tenant, signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    signed_in.get("/connections/connect")  # nothing ticked: an error
    page = text(signed_in.get("/connections"))
    assert re.search(r'class="flash flash-error" role="alert"><span class="flash-kind">'
                     r"Error:</span> Choose at least one Gmail permission", page)
    signed_in.post("/auth/logout", {"csrf_token": signed_in.csrf()})
    page = text(signed_in.get("/"))
    assert 'class="flash flash-info" role="status"' in page and "You are signed out." in page
    again = WebBrowser(signed_in.app)
    sign_in(again, emulator, "alice@acme.test")
    disconnected = again.post("/connections/disconnect", {"csrf_token": again.csrf()})
    assert disconnected.status_code == 303
    assert 'class="flash flash-info"' in text(again.get("/connections"))


def test_the_favicon_is_served_by_the_broker(google_app: Flask) -> None:
    browser = WebBrowser(google_app)
    page = text(browser.get("/"))
    assert '<link rel="icon" href="/favicon.svg" type="image/svg+xml">' in page
    for path in ("/favicon.svg", "/favicon.ico"):
        icon = browser.get(path)
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
        assert icon.get_data(as_text=True).startswith("<svg")
        assert "<script" not in icon.get_data(as_text=True)
        assert "default-src 'self'" in icon.headers["Content-Security-Policy"]


def test_the_disconnect_page_spaces_its_buttons(signed_in: WebBrowser) -> None:
    body = text(signed_in.get("/connections/disconnect"))
    body = body[body.index("<main>"):]
    form = body[body.index("<form"): body.index("</form>")]
    assert 'class="actions"' in form and 'class="button" id="cancel-disconnect"' in form
