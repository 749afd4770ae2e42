"""Unticking a permission holds: withheld scopes, their hand-out refusal, removal at Google."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from broker.db import get_db
from broker.models import AccessToken, Connection, Tenant
from broker.tenancy import clients
from tests.integration.web.support import (
    LABELS,
    READONLY,
    SEND,
    WebBrowser,
    events,
    query,
    text,
)
from tests.plugins.emulator import EmulatorControls

ALL = (READONLY, SEND, LABELS)


@pytest.fixture
def job(acme: Tenant, google_app: Flask) -> str:
    """An API client of acme allowed every scope the tests use; return its Basic header."""
    with get_db(google_app).transaction() as session:
        tenant = session.get(Tenant, acme.id)
        assert tenant is not None
        issued = clients.create_client(session, tenant, name="job", scopes=list(ALL))
    pair = f"{issued.client_id}:{issued.client_secret}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _connection(app: Flask) -> tuple[Connection, list[AccessToken]]:
    with get_db(app).transaction(write=False) as session:
        connection = session.scalar(select(Connection))
        assert connection is not None
        return connection, list(session.scalars(select(AccessToken)))


def _connect_all(browser: WebBrowser, emulator: EmulatorControls, *scopes: str) -> None:
    emulator.settings(auto_consent=True)
    try:
        started = browser.get("/connections/connect?" + "&".join(
            f"scope={s}" for s in scopes or ALL))
        page = browser.open(started.headers["Location"])
    finally:
        emulator.settings(auto_consent=None)
    assert "Gmail is connected." in text(page)


def _update(browser: WebBrowser, *scopes: str) -> Any:
    """Press "Update access" with these boxes ticked; return the broker's answer."""
    form = MultiDict([("csrf_token", browser.csrf()), *(("scope", s) for s in scopes)])
    return browser.broker.post(browser.public_url + "/connections/access", data=form,
                               environ_base=browser.environ)


def _ticked(page: str) -> set[str]:
    return set(re.findall(r'name="scope" value="([^"]+)" checked', page))


def _token(app: Flask, auth: str, scopes: list[str] | None = None) -> Any:
    body: dict[str, Any] = {"user": "alice@acme.test"}
    if scopes is not None:
        body["scopes"] = scopes
    return app.test_client().post("/api/v1/token", json=body, headers={"Authorization": auth},
                                  environ_base={"REMOTE_ADDR": "203.0.113.7"})


def _minted(emulator: EmulatorControls, access_token: str) -> set[str]:
    """Return the scopes Google itself says an access token carries."""
    info = emulator.http.get("/tokeninfo", params={"access_token": access_token})
    assert info.status_code == 200, info.text
    return set(info.json()["scope"].split())


def _google_calls(emulator: EmulatorControls) -> tuple[int, int, int]:
    calls = emulator.calls()
    return calls["authorize"], calls["token"]["authorization_code"], calls["revoke"]


def test_unticking_withholds_at_once_and_jobs_never_get_it(
    signed_in: WebBrowser, emulator: EmulatorControls, job: str
) -> None:
    app = signed_in.app
    _connect_all(signed_in, emulator)
    google = _google_calls(emulator)
    answer = _update(signed_in, READONLY, SEND)
    assert answer.status_code == 303 and answer.headers["Location"] == "/connections"
    assert _google_calls(emulator) == google  # nothing to add, so Google is not asked
    connection, tokens = _connection(app)
    assert connection.withheld_scopes == [LABELS] and LABELS in connection.granted_scopes
    assert not [t for t in tokens if LABELS in t.scopes]  # the stored all-scope token is gone
    [withheld] = events(app, "connection.scopes_withheld")
    assert withheld.scopes == [LABELS] and withheld.outcome == "ok"

    page = text(signed_in.open("/connections"))
    assert "Jobs can no longer use: See and edit your labels (gmail.labels)." in page
    assert _ticked(page) == {READONLY, SEND}
    usable = re.search(r'<ul id="granted".*?</ul>', page, re.S)
    held = re.search(r'<ul id="withheld".*?</ul>', page, re.S)
    assert usable and "gmail.labels" not in usable.group(0) and "gmail.send" in usable.group(0)
    assert held and "gmail.labels" in held.group(0)
    assert 'id="remove-at-google"' in page

    refused = _token(app, job, ["gmail.labels"])
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "scope_not_granted"
    assert "withheld by the user" in refused.json["error_description"]
    assert "/connections/connect?scope=" in refused.json["consent_url"]
    both = _token(app, job, ["gmail.readonly", "gmail.labels"])
    assert both.status_code == 409 and both.json["error"] == "scope_not_granted"

    default = _token(app, job)
    assert default.status_code == 200, default.json
    assert LABELS not in default.json["scopes"] and READONLY in default.json["scopes"]
    minted = _minted(emulator, default.json["access_token"])
    assert LABELS not in minted and {READONLY, SEND} <= minted  # narrowed at Google itself
    assert not [t for t in _connection(app)[1] if LABELS in t.scopes]

    # A consent link for the withheld scope shows Google's consent screen again.
    link = signed_in.get("/connections/connect?scope=gmail.labels")
    assert query(link.headers["Location"])["prompt"] == "consent"

    again = _update(signed_in, *ALL)
    assert again.headers["Location"] == "/connections"
    assert _google_calls(emulator)[:2] == google[:2]  # Google granted it long ago
    assert _connection(app)[0].withheld_scopes == []
    assert [e.scopes for e in events(app, "connection.scopes_restored")] == [[LABELS]]
    page = text(signed_in.open("/connections"))
    assert "Jobs may use again: " in page and _ticked(page) == set(ALL)
    assert 'id="withheld"' not in page
    labels = _token(app, job, ["gmail.labels"])
    assert labels.status_code == 200, labels.json
    assert LABELS in _minted(emulator, labels.json["access_token"])


def test_adding_a_scope_goes_to_google_and_keeps_the_withheld_one(
    signed_in: WebBrowser, emulator: EmulatorControls, job: str
) -> None:
    app = signed_in.app
    _connect_all(signed_in, emulator, READONLY, LABELS)
    answer = _update(signed_in, READONLY, SEND)
    assert answer.status_code == 303
    to_google = query(answer.headers["Location"])
    assert set(to_google["scope"].split()) >= {READONLY, SEND}
    assert LABELS not in to_google["scope"]
    assert _connection(app)[0].withheld_scopes == [LABELS]  # held before Google answers
    emulator.settings(auto_consent=True)
    page = signed_in.follow(answer)
    emulator.settings(auto_consent=None)
    assert "Gmail is connected." in text(page)
    connection, tokens = _connection(app)
    # Google answers with every scope ever granted; the withheld one stays withheld.
    assert {READONLY, SEND, LABELS} <= set(connection.granted_scopes)
    assert connection.withheld_scopes == [LABELS]
    assert not [t for t in tokens if LABELS in t.scopes]
    assert _token(app, job, ["gmail.labels"]).json["error"] == "scope_not_granted"


def test_unticking_everything_is_refused_and_nothing_changes(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_all(signed_in, emulator)
    answer = _update(signed_in)
    assert answer.status_code == 303
    assert "to stop all access, disconnect" in text(signed_in.open("/connections"))
    assert _connection(signed_in.app)[0].withheld_scopes == []
    no_csrf = signed_in.broker.post(signed_in.public_url + "/connections/access",
                                    data={"scope": READONLY}, environ_base=signed_in.environ)
    assert no_csrf.status_code == 403


def test_remove_at_google_revokes_then_asks_for_the_kept_set(
    signed_in: WebBrowser, emulator: EmulatorControls, job: str
) -> None:
    app = signed_in.app
    _connect_all(signed_in, emulator)
    _update(signed_in, READONLY, SEND)
    confirm = text(signed_in.open("/connections/remove"))
    assert "revoke its whole access to your mailbox at Google" in confirm
    assert "grant again only the permissions you keep" in confirm
    removed = re.search(r'<ul id="removed".*?</ul>', confirm, re.S)
    kept = re.search(r'<ul id="kept".*?</ul>', confirm, re.S)
    assert removed and "gmail.labels" in removed.group(0)
    assert kept and "gmail.labels" not in kept.group(0) and "gmail.send" in kept.group(0)
    assert _google_calls(emulator)[2] == 0  # showing the page does nothing yet

    authorize, codes, revokes = _google_calls(emulator)
    answer = signed_in.post("/connections/remove", {"csrf_token": signed_in.csrf()})
    assert answer.status_code == 303
    assert _google_calls(emulator)[2] == revokes + 1
    params = query(answer.headers["Location"])
    assert params["prompt"] == "consent"
    assert params["scope"].split() == ["openid", "email", READONLY, SEND]
    connection, tokens = _connection(app)
    assert connection.status == "revoked" and connection.status_reason == "scopes_removed"
    assert tokens == [] and connection.refresh_token is None
    assert [e.scopes for e in events(app, "connection.scopes_removed")] == [[LABELS]]

    emulator.settings(auto_consent=True)
    page = signed_in.follow(answer)
    emulator.settings(auto_consent=None)
    assert "Gmail is connected." in text(page)
    assert _google_calls(emulator)[:2] == (authorize + 1, codes + 1)
    connection, _ = _connection(app)
    assert connection.status == "active" and connection.withheld_scopes == []
    assert LABELS not in connection.granted_scopes  # gone at Google, not just held back
    assert {READONLY, SEND} <= set(connection.granted_scopes)
    assert 'id="withheld"' not in text(signed_in.open("/connections"))
    answer_labels = _token(app, job, ["gmail.labels"])
    assert answer_labels.json["error"] == "scope_not_granted"
    assert "not granted by the user" in answer_labels.json["error_description"]


def test_remove_at_google_changes_nothing_when_google_cannot_revoke(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_all(signed_in, emulator)
    _update(signed_in, READONLY, SEND)
    emulator.fault("revoke", status=503, count=-1)
    answer = signed_in.post("/connections/remove", {"csrf_token": signed_in.csrf()})
    assert answer.headers["Location"] == "/connections"
    assert "nothing changed" in text(signed_in.open("/connections"))
    connection, _ = _connection(signed_in.app)
    assert connection.status == "active" and connection.withheld_scopes == [LABELS]
    assert events(signed_in.app, "connection.revoke") == []


def test_remove_at_google_with_nothing_withheld_does_nothing(
    signed_in: WebBrowser, emulator: EmulatorControls
) -> None:
    _connect_all(signed_in, emulator)
    assert "nothing to remove" in text(signed_in.open("/connections/remove"))
    answer = signed_in.post("/connections/remove", {"csrf_token": signed_in.csrf()})
    assert answer.headers["Location"] == "/connections"
    assert emulator.calls()["revoke"] == 0
    assert _connection(signed_in.app)[0].status == "active"


def test_a_consent_link_for_a_withheld_scope_gives_it_back_after_consent(
    signed_in: WebBrowser, emulator: EmulatorControls, job: str
) -> None:
    app = signed_in.app
    _connect_all(signed_in, emulator)
    _update(signed_in, READONLY, SEND)
    consent_url = _token(app, job, ["gmail.labels"]).json["consent_url"]
    started = signed_in.get(consent_url.removeprefix(signed_in.public_url))
    assert query(started.headers["Location"])["prompt"] == "consent"
    emulator.settings(auto_consent=True)
    page = signed_in.open(started.headers["Location"])
    emulator.settings(auto_consent=None)
    assert "Gmail is connected." in text(page)
    assert _connection(app)[0].withheld_scopes == []
    assert events(app, "connection.connect")[-1].details["restored"] == [LABELS]
    assert _token(app, job, ["gmail.labels"]).status_code == 200
