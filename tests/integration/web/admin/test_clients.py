"""The API clients page: secrets shown once, rotation with grace, disable, edits, isolation."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.keys import digest
from broker.models import ApiClient, AuditEvent
from broker.tenancy import clients
from tests.factories import make_tenant
from tests.integration.web.admin.conftest import READONLY, SEND, Browser, Org

SECRET = re.compile(r'id="client-secret">([^<]+)<')
CLIENT_ID = re.compile(r'id="client-id">(cl_[0-9a-f]+)<')


def create(browser: Browser, name: str = "nightly", **extra: object) -> tuple[str, str, str]:
    answer = browser.post("/admin/clients", {"name": name, "scopes": [READONLY], **extra})
    assert answer.status_code == 200
    body = answer.get_data(as_text=True)
    client_id, secret = CLIENT_ID.search(body), SECRET.search(body)
    assert client_id and secret
    assert secret.group(1) not in answer.headers.get("Set-Cookie", "")
    return client_id.group(1), secret.group(1), body


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
    assert answer.status_code == 303
    assert "not an IP range" in as_admin.get("/admin/clients").get_data(as_text=True)
    answer = as_admin.post("/admin/clients", {"name": "x"})
    assert "at least one scope" in as_admin.get("/admin/clients").get_data(as_text=True)
    with get_db(admin_app).transaction(write=False) as session:
        assert not list(session.scalars(select(ApiClient)))


def test_rotation_shows_the_new_secret_and_keeps_the_old_for_the_grace(
    admin_app: Flask, as_admin: Browser
) -> None:
    client_id, old, _ = create(as_admin)
    answer = as_admin.post(f"/admin/clients/{client_id}/rotate", {"grace": "2h"})
    assert answer.status_code == 200
    new = SECRET.search(answer.get_data(as_text=True))
    assert new and new.group(1) != old
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
