"""Webhooks (secret once, sealed), data keys (list, rotate), connections (re-consent first)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from broker import webhooks
from broker.db import get_db
from broker.keys.extension import get_keys
from broker.models import AuditEvent, DataKey, Webhook
from tests.factories import make_connection, make_user
from tests.integration.web.admin.conftest import READONLY, Browser, Org

SECRET = re.compile(r'id="webhook-secret">([^<]+)<')


def test_adding_a_webhook_shows_its_secret_once_and_seals_it(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    answer = as_admin.post("/admin/webhooks", {
        "url": "https://hooks.example.com/gmail", "events": ["connection.revoked"],
    })
    assert answer.status_code == 303
    shown = as_admin.get(answer.headers["Location"])
    secret = SECRET.search(shown.get_data(as_text=True))
    assert secret and secret.group(1).startswith("whsec_")
    for response in (answer, shown):
        assert secret.group(1) not in response.headers.get("Set-Cookie", "")
    assert secret.group(1) not in answer.headers["Location"]
    # A reload adds no second webhook and does not show the secret again.
    again = as_admin.get(answer.headers["Location"]).get_data(as_text=True)
    assert SECRET.search(again) is None and 'id="secret-gone"' in again
    with get_db(admin_app).transaction(write=False) as session:
        hook = session.scalars(select(Webhook)).one()
        opened = get_keys(admin_app).open(session, org.tenant.id, hook.id, "webhook_secret",
                                          hook.secret)
        audited = repr([e.details for e in session.scalars(select(AuditEvent))])
    assert opened.decode() == secret.group(1)
    assert hook.events == ["connection.revoked"]
    assert secret.group(1) not in audited
    listing = as_admin.get("/admin/webhooks").get_data(as_text=True)
    assert "hooks.example.com" in listing and secret.group(1) not in listing


def test_a_refused_webhook_keeps_what_was_typed(admin_app: Flask, as_admin: Browser) -> None:
    answer = as_admin.post("/admin/webhooks", {"url": "http://hooks.example.com/x",
                                               "events": ["connection.revoked"]})
    assert answer.status_code == 400
    body = answer.get_data(as_text=True)
    assert 'id="form-error"' in body and 'value="http://hooks.example.com/x"' in body
    form = body[body.index('id="add-webhook"'):]
    assert form.count(" checked") == 1 and 'value="connection.revoked" checked' in form


def test_unsafe_webhook_targets_are_refused(admin_app: Flask, as_admin: Browser) -> None:
    for url in ("http://hooks.example.com/x", "https://127.0.0.1/x", "https://10.1.2.3/x",
                "https://[::1]/x", "https://169.254.169.254/latest", "https://localhost/x",
                "https://user:pw@hooks.example.com/x", "javascript:alert(1)"):
        as_admin.post("/admin/webhooks", {"url": url, "events": list(webhooks.EVENTS)})
    as_admin.post("/admin/webhooks", {"url": "https://ok.example.com/x", "events": ["nope"]})
    as_admin.post("/admin/webhooks", {"url": "https://ok.example.com/x"})
    with get_db(admin_app).transaction(write=False) as session:
        assert not list(session.scalars(select(Webhook)))


def test_disable_webhook_and_deliveries_listed(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    as_admin.post("/admin/webhooks", {"url": "https://hooks.example.com/a",
                                      "events": list(webhooks.EVENTS)})
    with get_db(admin_app).transaction() as session:
        hook = session.scalars(select(Webhook)).one()
        webhooks.enqueue(session, org.tenant.id, "connection.created", {"user_id": "u1"})
    body = as_admin.get("/admin/webhooks").get_data(as_text=True)
    assert "connection.created" in body and "next try" in body
    assert as_admin.post(f"/admin/webhooks/{hook.id}/disable").status_code == 303
    with get_db(admin_app).transaction() as session:
        assert session.get(Webhook, hook.id).status == "disabled"  # type: ignore[union-attr]
        foreign = Webhook(tenant_id=other.tenant.id, url="https://globex.example/h",
                          secret=b"x", events=[])
        session.add(foreign)
    assert as_admin.post(f"/admin/webhooks/{foreign.id}/disable").status_code == 404
    assert "globex.example" not in as_admin.get("/admin/webhooks").get_data(as_text=True)


def test_keys_are_listed_and_rotated(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    body = as_admin.get("/admin/keys").get_data(as_text=True)
    assert 'data-version="1"' in body and "(current)" in body
    assert as_admin.post("/admin/keys/rotate").status_code == 303
    with get_db(admin_app).transaction(write=False) as session:
        versions = list(session.scalars(
            select(DataKey.version).where(DataKey.tenant_id == org.tenant.id)
        ))
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "key.rotate_tenant")
        ).one()
    assert sorted(versions) == [1, 2]
    assert event.details == {"before": 1, "after": 2}
    body = as_admin.get("/admin/keys").get_data(as_text=True)
    assert 'data-version="2"' in body and "version 2 now seals" in body


def test_keys_of_another_tenant_are_not_shown(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    with get_db(admin_app).transaction() as session:
        get_keys(admin_app).rotate_tenant(session, other.tenant.id)
    body = as_admin.get("/admin/keys").get_data(as_text=True)
    assert 'data-version="2"' not in body


def test_connections_needing_reconsent_come_first_with_reasons(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser,
    make_browser: Callable[..., Browser],
) -> None:
    ok = make_user(admin_app, org.tenant, "ok@acme.test")
    make_connection(admin_app, ok, scopes=[READONLY])
    broken = make_connection(admin_app, org.member, scopes=[READONLY], status="needs_reauth")
    with get_db(admin_app).transaction() as session:
        session.merge(broken).status_reason = "unused_too_long"
    make_connection(admin_app, other.member, scopes=[READONLY], status="needs_reauth")
    body = as_admin.get("/admin/connections").get_data(as_text=True)
    assert body.index("mia@acme.test") < body.index("ok@acme.test")
    assert "unused for too long" in body
    assert "gmember@globex.test" not in body
    filtered = as_admin.get("/admin/connections?status=active").get_data(as_text=True)
    assert "ok@acme.test" in filtered and "mia@acme.test" not in filtered
    assert as_admin.get("/admin/connections?status=bogus").status_code == 400
