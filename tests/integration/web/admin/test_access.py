"""Only a tenant's signed-in admins reach the admin pages; every POST needs the CSRF token."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from broker.clock import utcnow
from broker.db import get_db
from broker.models import AuditEvent
from tests.integration.web.admin.conftest import Browser, Org

PAGES = ["/admin/users", "/admin/policy", "/admin/clients", "/admin/connections",
         "/admin/webhooks", "/admin/audit", "/admin/keys", "/admin/audit/export.csv"]


@pytest.mark.parametrize("path", PAGES)
def test_a_member_gets_the_403_page(org: Org, make_browser: Callable[..., Browser],
                                    path: str) -> None:
    answer = make_browser(org.member).get(path)
    assert answer.status_code == 403
    assert answer.mimetype == "text/html"
    assert "administrators" in answer.get_data(as_text=True)


def test_signed_out_people_are_sent_to_the_start_page(
    org: Org, make_browser: Callable[..., Browser]
) -> None:
    answer = make_browser(None).get("/admin/users")
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith("/")


def test_the_admin_sees_every_page_with_navigation_and_headers(as_admin: Browser) -> None:
    for path in PAGES[:-1]:
        answer = as_admin.get(path)
        assert answer.status_code == 200, path
        body = answer.get_data(as_text=True)
        assert 'href="/admin/audit"' in body and "admin.css" in body
        assert answer.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    css = as_admin.get("/admin/admin.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_pages_write_nothing_on_get(admin_app: Flask, as_admin: Browser) -> None:
    def count() -> int:
        with get_db(admin_app).transaction(write=False) as session:
            return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    before = count()
    for path in PAGES:
        as_admin.get(path)
    assert count() == before


@pytest.mark.parametrize("path", [
    "/admin/policy", "/admin/clients", "/admin/users", "/admin/webhooks", "/admin/keys/rotate",
])
def test_posts_without_the_csrf_token_are_refused(as_admin: Browser, path: str) -> None:
    answer = as_admin.post(path, {"name": "x", "email": "x@acme.test"}, csrf=False)
    assert answer.status_code == 403
    assert "csrf_failed" in answer.get_data(as_text=True)


def test_ended_admin_sessions_stop_at_once(
    admin_app: Flask, org: Org, make_browser: Callable[..., Browser]
) -> None:
    second = make_browser(org.admin)
    first = make_browser(org.admin)
    from broker.tenancy import users
    with get_db(admin_app).transaction() as session:
        users.end_sessions(session, org.admin.id, "admin", utcnow())
    assert first.get("/admin/users").status_code == 302
    assert second.get("/admin/users").status_code == 302
