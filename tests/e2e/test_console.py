"""The admin console read at a glance, in Chromium: audit log, secret shown once, refusals."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from broker import audit
from broker.clock import utcnow
from broker.db import get_db
from broker.models import ApiClient, AuditEvent, Policy, Tenant
from tests.e2e.conftest import READONLY, SEND, LiveBroker, sign_in_admin
from tests.e2e.test_browser import sign_in

pytestmark = pytest.mark.e2e
LAPTOP = {"width": 1366, "height": 768}


def _fill_log(broker: LiveBroker, count: int) -> None:
    """Write a realistic mix of events, the newest now, with long details."""
    now = utcnow()
    with get_db(broker.app).transaction() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "acme")).one()
        for i in range(count):
            kind = i % 3
            event = audit.record(
                session, tenant_id=tenant.id, action="token.handout", actor_type="client",
                actor_id="cl_0123456789abcdef0123", ip="203.0.113.17",
                outcome="ok" if kind == 0 else "denied",
                reason=None if kind == 0 else ("invalid_request", "scope_not_allowed")[kind - 1],
                scopes=[READONLY, SEND],
                details={
                    "description": "scopes: not a Gmail scope 'https://mail.google.com/'",
                    "requested": [READONLY, SEND, "https://www.googleapis.com/auth/gmail.modify"],
                    "user": "a-rather-long-address.for-testing@acme.test",
                } if kind == 1 else {"token_id": f"{i:032x}", "cached": bool(i % 2)},
            )
            event.at = now - dt.timedelta(seconds=i)


def test_the_audit_log_fits_a_laptop_screen(
    chromium: Any, admin_broker: LiveBroker, screenshots: Path
) -> None:
    context = chromium.new_context(viewport=LAPTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        sign_in_admin(page, admin_broker)
        _fill_log(admin_broker, 60)
        page.goto(admin_broker.url + "/admin/audit")
        rows = page.locator("#events tbody tr")
        page.screenshot(path=str(screenshots / "console-01-audit-log-1366x768.png"))
        page.screenshot(path=str(screenshots / "console-02-audit-log-full.png"), full_page=True)
        assert rows.count() == 50
        # Nothing sticks out sideways, and every event is one line of the same height.
        assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
        heights = page.evaluate(
            "[...document.querySelectorAll('#events tbody tr')].map(r => r.offsetHeight)")
        assert max(heights) == min(heights) and max(heights) <= 30, heights
        first_time = page.inner_text("#events tbody tr:nth-child(1) td.when")
        assert first_time.endswith("Z") and "\n" not in first_time and len(first_time) == 20
        # The reason of an invalid_request is right there; the full JSON on a click.
        refused = page.locator("#events tbody tr[data-outcome='denied']").first
        assert "description: scopes: not a Gmail scope" in refused.inner_text()
        refused.locator("summary").click()
        assert "gmail.modify" in refused.locator("pre.json").inner_text()
        page.screenshot(path=str(screenshots / "console-03-audit-event-opened.png"))
        with get_db(admin_broker.app).transaction(write=False) as session:
            total = session.scalar(select(func.count()).select_from(AuditEvent))
        page.click("#older")
        page.wait_for_url("**before=*")
        assert rows.count() == total - 50
        assert page.locator("#newer").count() == 1 and page.locator("#older").count() == 0
    finally:
        context.close()


def test_client_created_page_survives_a_reload(
    page: Any, admin_broker: LiveBroker, screenshots: Path
) -> None:
    sign_in_admin(page, admin_broker)
    page.goto(admin_broker.url + "/admin/clients")
    page.fill("#name", "weekly-report")
    page.check(f"#create-client input[value='{READONLY}']")
    page.click("#create-client-button")
    page.wait_for_url("**/secret")
    secret = page.inner_text("#client-secret").strip()
    assert len(secret) >= 43
    page.screenshot(path=str(screenshots / "console-04-client-created.png"), full_page=True)
    page.reload()
    assert "already shown" in page.inner_text("h1")
    assert secret not in page.content()
    page.screenshot(path=str(screenshots / "console-05-client-created-reloaded.png"),
                    full_page=True)
    with get_db(admin_broker.app).transaction(write=False) as session:
        names = list(session.scalars(select(ApiClient.name)))
    assert names.count("weekly-report") == 1
    # The same name again: the form says why and keeps what was typed.
    page.goto(admin_broker.url + "/admin/clients")
    page.fill("#name", "weekly-report")
    page.check(f"#create-client input[value='{SEND}']")
    page.click("#create-client-button")
    assert "already exists" in page.inner_text("#form-error")
    assert page.input_value("#name") == "weekly-report"
    assert page.is_checked(f"#create-client input[value='{SEND}']")
    page.screenshot(path=str(screenshots / "console-06-client-name-taken.png"), full_page=True)


def test_refusal_and_cancel_pages(
    page: Any, live_broker: LiveBroker, screenshots: Path
) -> None:
    sign_in(page, live_broker)
    # Only the scopes the tenant's job uses are ticked; the rest say no job uses them.
    assert page.is_checked(f"input[name='scope'][value='{READONLY}']")
    assert not page.is_checked("input[name='scope'][value$='gmail.labels']")
    page.screenshot(path=str(screenshots / "console-07-consent-least-privilege.png"),
                    full_page=True)
    with get_db(live_broker.app).transaction() as session:
        session.execute(update(Policy).values(offered_scopes=[READONLY]))
    answer = page.goto(live_broker.url + f"/connections/connect?scope={SEND}")
    assert answer.status == 400
    assert "gmail.send" in page.inner_text("#not-offered")
    assert page.inner_text("#reason") == "scope_not_offered"
    page.screenshot(path=str(screenshots / "console-08-refusal-scope-not-offered.png"),
                    full_page=True)
    page.goto(live_broker.url + "/connections")
    page.click("#connect")
    page.click("button[value='cancel']")
    page.wait_for_selector("#cancelled")
    assert "Nothing changed" in page.inner_text("h1")
    page.screenshot(path=str(screenshots / "console-09-cancelled-at-google.png"), full_page=True)
    page.click("#back")
    page.wait_for_url(live_broker.url + "/connections")
