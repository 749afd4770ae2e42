"""The users page: invite, suspend, reactivate, delete, end sessions, force re-consent."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.models import (
    AccessToken,
    AuditEvent,
    BrowserSession,
    Connection,
    User,
    Webhook,
    WebhookDelivery,
    utcnow,
)
from tests.factories import make_connection
from tests.integration.web.admin.conftest import READONLY, Browser, Org
from tests.plugins.emulator import EmulatorControls


def user(app: Flask, email: str) -> User | None:
    with get_db(app).transaction(write=False) as session:
        return session.scalar(select(User).where(User.email == email))


def actions(app: Flask) -> list[str]:
    with get_db(app).transaction(write=False) as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_the_list_shows_status_last_sign_in_and_connection(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    make_connection(admin_app, org.member, scopes=[READONLY], status="degraded")
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert 'data-email="mia@acme.test"' in body and "degraded" in body
    assert "not connected" in body  # the admin has no connection
    assert body.count("Z</td>") >= 2  # last sign-in times in UTC


def test_invite(admin_app: Flask, as_admin: Browser) -> None:
    assert as_admin.post("/admin/users", {"email": "New@Example.com", "role": "admin"}
                         ).status_code == 303
    invited = user(admin_app, "new@example.com")
    assert invited is not None and invited.status == "invited" and invited.role == "admin"
    again = as_admin.post("/admin/users", {"email": "new@example.com"})
    assert again.status_code == 409 and "already a user" in again.get_data(as_text=True)
    typo = as_admin.post("/admin/users", {"email": "nonsense", "role": "admin"})
    body = typo.get_data(as_text=True)
    assert typo.status_code == 400 and "not an email" in body and 'id="form-error"' in body
    # The form keeps what was typed, the role included.
    assert 'id="invite-email" required value="nonsense"' in body
    assert '<option value="admin" selected>' in body


def test_suspend_ends_sessions_and_reactivate_restores(
    admin_app: Flask, org: Org, as_admin: Browser, make_browser: Callable[..., Browser]
) -> None:
    member_browser = make_browser(org.member)
    assert member_browser.get("/connections").status_code == 200
    assert as_admin.post(f"/admin/users/{org.member.id}/suspend").status_code == 303
    assert user(admin_app, "mia@acme.test").status == "suspended"  # type: ignore[union-attr]
    assert member_browser.get("/connections").status_code == 302
    assert as_admin.post(f"/admin/users/{org.member.id}/reactivate").status_code == 303
    assert user(admin_app, "mia@acme.test").status == "active"  # type: ignore[union-attr]
    assert {"user.suspend", "user.reactivate"} <= set(actions(admin_app))


def test_the_last_active_admin_is_protected(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    as_admin.post(f"/admin/users/{org.admin.id}/role", {"role": "member"})
    assert "cannot be demoted" in as_admin.get("/admin/users").get_data(as_text=True)
    as_admin.post(f"/admin/users/{org.admin.id}/suspend")
    as_admin.post(f"/admin/users/{org.admin.id}/delete")
    boss = user(admin_app, "boss@acme.test")
    assert boss is not None and boss.role == "admin" and boss.status == "active"


def test_promote_then_the_other_admin_may_be_demoted(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    as_admin.post(f"/admin/users/{org.member.id}/role", {"role": "admin"})
    assert user(admin_app, "mia@acme.test").role == "admin"  # type: ignore[union-attr]
    as_admin.post(f"/admin/users/{org.member.id}/role", {"role": "member"})
    assert user(admin_app, "mia@acme.test").role == "member"  # type: ignore[union-attr]


def test_end_all_sessions(
    admin_app: Flask, org: Org, as_admin: Browser, make_browser: Callable[..., Browser]
) -> None:
    phone, laptop = make_browser(org.member), make_browser(org.member)
    as_admin.post(f"/admin/users/{org.member.id}/end-sessions")
    assert phone.get("/connections").status_code == 302
    assert laptop.get("/connections").status_code == 302
    with get_db(admin_app).transaction(write=False) as session:
        reasons = set(session.scalars(
            select(BrowserSession.end_reason).where(BrowserSession.user_id == org.member.id)
        ))
    assert reasons == {"admin"}
    assert "Ended 2 sessions" in as_admin.get("/admin/users").get_data(as_text=True)
    assert "user.end_sessions" in actions(admin_app)


def test_force_reconsent(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    connection = make_connection(admin_app, org.member, scopes=[READONLY])
    with get_db(admin_app).transaction() as session:
        session.add(Webhook(tenant_id=org.tenant.id, url="https://hooks.example/x",
                            secret=b"sealed", events=["connection.needs_reauth"]))
        session.add(AccessToken(connection_id=connection.id, scope_key=READONLY,
                                token=b"sealed", expires_at=utcnow()))
    assert as_admin.post(f"/admin/users/{org.member.id}/reconsent").status_code == 303
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(Connection, connection.id)
        assert row is not None
        assert (row.status, row.status_reason) == ("needs_reauth", "admin_forced")
        assert not list(session.scalars(select(AccessToken)))
        delivery = session.scalars(select(WebhookDelivery)).one()
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "connection.force_reconsent")
        ).one()
    assert delivery.payload["reason"] == "admin_forced"
    assert event.reason == "admin_forced" and event.subject_user_id == org.member.id
    as_admin.post(f"/admin/users/{org.member.id}/reconsent")
    assert "already needs" in as_admin.get("/admin/users").get_data(as_text=True)


def test_delete_asks_first_then_revokes_and_deletes(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    make_connection(admin_app, org.member, scopes=[READONLY])
    page = as_admin.get(f"/admin/users/{org.member.id}/delete")
    assert page.status_code == 200 and "Yes, delete" in page.get_data(as_text=True)
    assert user(admin_app, "mia@acme.test") is not None
    assert as_admin.post(f"/admin/users/{org.member.id}/delete").status_code == 303
    assert user(admin_app, "mia@acme.test") is None
    assert {"connection.revoke", "user.delete"} <= set(actions(admin_app))


def test_delete_is_refused_while_google_cannot_revoke(
    admin_app: Flask, org: Org, as_admin: Browser, emulator: EmulatorControls
) -> None:
    make_connection(admin_app, org.member, scopes=[READONLY])
    emulator.fault("revoke", status=503, count=-1)
    answer = as_admin.post(f"/admin/users/{org.member.id}/delete")
    assert answer.status_code == 303
    assert user(admin_app, "mia@acme.test") is not None
    assert emulator.calls()["revoke"] == 1


def test_another_tenants_users_are_not_found(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    target = other.member.id
    for path in ("suspend", "reactivate", "end-sessions", "reconsent", "role", "delete"):
        assert as_admin.post(f"/admin/users/{target}/{path}", {"role": "admin"}
                             ).status_code == 404, path
    assert as_admin.get(f"/admin/users/{target}/delete").status_code == 404
    assert as_admin.get("/admin/users/not-a-uuid/delete").status_code == 404
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert "gmember@globex.test" not in body
    theirs = user(admin_app, "gmember@globex.test")
    assert theirs is not None and theirs.status == "active"
