"""The API clients page: secrets shown once, rotation with grace, disable, edits, isolation."""

from __future__ import annotations

import re
from collections.abc import Callable

from click.testing import CliRunner
from flask import Flask
from flask.cli import ScriptInfo
from sqlalchemy import select

from broker.cli import cli
from broker.clock import utcnow
from broker.db import get_db
from broker.keys import digest
from broker.models import ApiClient, AuditEvent, WorkerState
from broker.tenancy import clients
from tests.conftest import Clock
from tests.factories import make_tenant
from tests.integration.web.admin.conftest import READONLY, SEND, Browser, Org

SECRET = re.compile(r'id="client-secret">([^<]+)<')
CLIENT_ID = re.compile(r'id="client-id">(cl_[0-9a-f]+)<')


def create(browser: Browser, name: str = "nightly", **extra: object) -> tuple[str, str, str]:
    """Create a client on the page: the POST redirects, the GET shows the secret once."""
    answer = browser.post("/admin/clients", {"name": name, "scopes": [READONLY], **extra})
    assert answer.status_code == 303
    shown = browser.get(answer.headers["Location"])
    assert shown.status_code == 200
    body = shown.get_data(as_text=True)
    client_id, secret = CLIENT_ID.search(body), SECRET.search(body)
    assert client_id and secret
    for response in (answer, shown):
        assert secret.group(1) not in response.headers.get("Set-Cookie", "")
        assert secret.group(1) not in response.headers.get("Location", "")
    return client_id.group(1), secret.group(1), body


def test_reloading_client_created_neither_creates_again_nor_shows_the_secret(
    admin_app: Flask, org: Org, as_admin: Browser, make_browser: Callable[..., Browser]
) -> None:
    answer = as_admin.post("/admin/clients", {"name": "nightly", "scopes": [READONLY]})
    location = answer.headers["Location"]
    # Another session of the same admin cannot take the secret kept for this one.
    elsewhere = make_browser(org.admin).get(location).get_data(as_text=True)
    assert SECRET.search(elsewhere) is None and 'id="secret-gone"' in elsewhere
    # The secret waits sealed, never in clear, and only until it is shown.
    with get_db(admin_app).transaction(write=False) as session:
        kept = list(session.scalars(select(WorkerState.value)))
    first = as_admin.get(location).get_data(as_text=True)
    secret = SECRET.search(first)
    assert secret is not None
    assert kept and all(secret.group(1) not in v and secret.group(1).encode().hex() not in v
                        for v in kept)
    again = as_admin.get(location)
    assert again.status_code == 200
    body = again.get_data(as_text=True)
    assert SECRET.search(body) is None and secret.group(1) not in body
    assert "already shown" in body
    with get_db(admin_app).transaction(write=False) as session:
        assert len(list(session.scalars(select(ApiClient)))) == 1
        assert not list(session.scalars(select(WorkerState).where(
            WorkerState.name.startswith("shown_once:"))))


def test_a_secret_not_fetched_in_time_is_not_shown(
    admin_app: Flask, as_admin: Browser, clock: Clock
) -> None:
    clock.now = utcnow()  # the admin's session was opened on the real clock
    admin_app.extensions["broker.clock"] = clock
    answer = as_admin.post("/admin/clients", {"name": "nightly", "scopes": [READONLY]})
    clock.advance(minutes=11)
    body = as_admin.get(answer.headers["Location"]).get_data(as_text=True)
    assert SECRET.search(body) is None and "already shown" in body


def test_client_names_are_unique_per_tenant(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    create(as_admin, "nightly")
    answer = as_admin.post("/admin/clients", {"name": " Nightly ", "scopes": [READONLY, SEND],
                                              "ip_ranges": "10.0.0.0/8"})
    assert answer.status_code == 409
    body = answer.get_data(as_text=True)
    assert 'id="form-error"' in body and "already exists" in body
    # The form comes back as typed.
    assert 'value=" Nightly "' in body and ">10.0.0.0/8</textarea>" in body
    assert body.count("checked") == 2
    # Another tenant may use the name; the CLI gets the same refusal from the same service.
    globex = make_tenant(admin_app, "globex", domains=("globex.test",))
    with get_db(admin_app).transaction() as session:
        clients.create_client(session, globex, name="nightly", scopes=[READONLY])
    result = CliRunner().invoke(
        cli, ["client", "create", "--tenant", "acme", "--name", "NIGHTLY",
              "--scope", "gmail.readonly"],
        obj=ScriptInfo(create_app=lambda: admin_app),
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: an API client named 'NIGHTLY' already exists; choose another name"
    ]
    with get_db(admin_app).transaction(write=False) as session:
        names = sorted(session.scalars(select(ApiClient.name)))
    assert names == ["nightly", "nightly"]


def test_a_created_clients_secret_is_shown_once_and_stored_hashed(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    client_id, secret, _ = create(as_admin, ip_ranges="10.0.0.7/8")
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, client_id)
        assert row is not None and row.tenant_id == org.tenant.id
        assert row.secret_sha256 == digest(secret)
        assert row.allowed_ip_ranges == ["10.0.0.0/8"]
        details = [e.details for e in session.scalars(select(AuditEvent))]
    assert secret not in repr(details)
    for page in ("/admin/clients", f"/admin/clients/{client_id}", "/admin/audit"):
        body = as_admin.get(page).get_data(as_text=True)
        assert client_id in body and secret not in body


def test_bad_input_creates_nothing(admin_app: Flask, as_admin: Browser) -> None:
    answer = as_admin.post("/admin/clients", {"name": "x", "scopes": [READONLY],
                                              "ip_ranges": "10.0.0.0/99"})
    assert answer.status_code == 400
    body = answer.get_data(as_text=True)
    assert "not an IP range" in body and ">10.0.0.0/99</textarea>" in body
    assert 'value="x"' in body
    answer = as_admin.post("/admin/clients", {"name": "x"})
    assert "at least one scope" in answer.get_data(as_text=True)
    with get_db(admin_app).transaction(write=False) as session:
        assert not list(session.scalars(select(ApiClient)))


def test_rotation_shows_the_new_secret_and_keeps_the_old_for_the_grace(
    admin_app: Flask, as_admin: Browser
) -> None:
    client_id, old, _ = create(as_admin)
    answer = as_admin.post(f"/admin/clients/{client_id}/rotate", {"grace": "2h"})
    assert answer.status_code == 303
    shown = as_admin.get(answer.headers["Location"]).get_data(as_text=True)
    new = SECRET.search(shown)
    assert new and new.group(1) != old and "New secret" in shown
    # A reload neither rotates again nor shows it again.
    assert SECRET.search(as_admin.get(answer.headers["Location"]).get_data(as_text=True)) is None
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, client_id)
        assert row is not None
        assert row.secret_sha256 == digest(new.group(1))
        assert row.previous_secret_sha256 == digest(old)
        assert row.previous_secret_expires_at is not None
    assert "valid until" in as_admin.get(f"/admin/clients/{client_id}").get_data(as_text=True)
    refused = as_admin.post(f"/admin/clients/{client_id}/rotate", {"grace": "90d"})
    assert refused.status_code == 303


def test_editing_scopes_and_ranges_is_audited(admin_app: Flask, as_admin: Browser) -> None:
    client_id, _, _ = create(as_admin)
    answer = as_admin.post(f"/admin/clients/{client_id}",
                           {"scopes": [READONLY, SEND], "ip_ranges": "192.0.2.1/24"})
    assert answer.status_code == 303
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, client_id)
        assert row is not None
        assert row.allowed_scopes == [READONLY, SEND]
        assert row.allowed_ip_ranges == ["192.0.2.0/24"]
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "client.update")
        ).one()
    assert event.details["before"]["allowed_scopes"] == [READONLY]
    assert event.details["after"]["allowed_ip_ranges"] == ["192.0.2.0/24"]


def test_disabling_a_client(admin_app: Flask, as_admin: Browser) -> None:
    client_id, _, _ = create(as_admin)
    assert as_admin.post(f"/admin/clients/{client_id}/disable").status_code == 303
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, client_id)
        assert row is not None and row.status == "disabled"
    body = as_admin.get(f"/admin/clients/{client_id}").get_data(as_text=True)
    assert 'id="rotate-client"' not in body
    assert as_admin.post(f"/admin/clients/{client_id}/rotate", {"grace": "0h"}).status_code == 303


def test_another_tenants_client_is_not_found(admin_app: Flask, as_admin: Browser) -> None:
    globex = make_tenant(admin_app, "globex", domains=("globex.test",))
    with get_db(admin_app).transaction() as session:
        foreign = clients.create_client(session, globex, name="theirs", scopes=[READONLY])
    cid = foreign.client_id
    assert as_admin.get(f"/admin/clients/{cid}").status_code == 404
    assert as_admin.post(f"/admin/clients/{cid}/rotate", {"grace": "1h"}).status_code == 404
    assert as_admin.post(f"/admin/clients/{cid}/disable").status_code == 404
    assert as_admin.post(f"/admin/clients/{cid}", {"scopes": [READONLY]}).status_code == 404
    assert cid not in as_admin.get("/admin/clients").get_data(as_text=True)
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, cid)
        assert row is not None and row.status == "active"


def test_a_refused_edit_keeps_what_was_typed(admin_app: Flask, as_admin: Browser) -> None:
    client_id, _, _ = create(as_admin)
    answer = as_admin.post(f"/admin/clients/{client_id}",
                           {"scopes": [SEND], "ip_ranges": "192.0.2.1/24\nnot-a-range"})
    assert answer.status_code == 400
    body = answer.get_data(as_text=True)
    assert 'id="form-error"' in body and "not an IP range: &#39;not-a-range&#39;" in body
    assert ">192.0.2.1/24\nnot-a-range</textarea>" in body
    edit = body[body.index('id="edit-client"'):]
    assert f'value="{SEND}" checked' in edit and f'value="{READONLY}" checked' not in edit
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, client_id)
        assert row is not None and row.allowed_scopes == [READONLY]


def test_opening_another_clients_secret_page_keeps_the_waiting_secret(
    admin_app: Flask, as_admin: Browser
) -> None:
    other_id, _, _ = create(as_admin, "first")
    answer = as_admin.post("/admin/clients", {"name": "second", "scopes": [READONLY]})
    # A stray visit to another client's secret page shows nothing and takes nothing.
    stray = as_admin.get(f"/admin/clients/{other_id}/secret").get_data(as_text=True)
    assert SECRET.search(stray) is None
    assert SECRET.search(as_admin.get(answer.headers["Location"]).get_data(as_text=True))
