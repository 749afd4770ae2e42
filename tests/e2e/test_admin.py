"""A tenant admin in a real browser: every page, a client used by a job, policy and suspension."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from broker import worker
from broker.db import get_db
from broker.models import User
from tests.e2e.conftest import ADMIN, READONLY, LiveBroker, sign_in_admin, sign_in_admin_account

pytestmark = pytest.mark.e2e


def token(broker: LiveBroker, client_id: str, secret: str) -> httpx.Response:
    """Ask the token API for alice's token as a job would."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return httpx.post(
        broker.url + "/api/v1/token", json={"user": "alice@acme.test", "scopes": [READONLY]},
        headers={"Authorization": "Basic " + basic}, timeout=15,
    )


def create_client(page: Any, broker: LiveBroker, shots: Path) -> tuple[str, str]:
    """Create an API client on its page; return the id and the secret shown once."""
    page.goto(broker.url + "/admin/clients")
    page.fill("#name", "nightly-export")
    page.check(f"#create-client input[value='{READONLY}']")
    page.click("#create-client-button")
    page.wait_for_url("**/secret")  # post, redirect, get: the answer to the POST is a 303
    secret = page.inner_text("#client-secret").strip()
    client_id = page.inner_text("#client-id").strip()
    page.screenshot(path=str(shots / "admin-04-client-secret-once.png"), full_page=True)
    return client_id, secret


def test_admin_pages_client_policy_suspension_and_csv(
    page: Any, admin_broker: LiveBroker, screenshots: Path, tmp_path: Path
) -> None:
    broker = admin_broker
    sign_in_admin(page, broker)
    page.goto(broker.url + "/admin/users")
    assert "alice@acme.test" in page.inner_text("#users")
    page.screenshot(path=str(screenshots / "admin-01-users.png"), full_page=True)

    client_id, secret = create_client(page, broker, screenshots)
    first = token(broker, client_id, secret)
    assert first.status_code == 200, first.text
    assert first.json()["scopes"] == [READONLY]
    page.goto(broker.url + "/admin/clients")
    assert client_id in page.inner_text("#clients") and secret not in page.content()
    page.screenshot(path=str(screenshots / "admin-03-clients.png"), full_page=True)

    # A policy change on the page is enforced on the API at once.
    page.goto(broker.url + "/admin/policy")
    page.screenshot(path=str(screenshots / "admin-02-policy.png"), full_page=True)
    page.fill("#token_ip_ranges", "10.0.0.0/8")
    page.click("#save-policy")
    assert "Policy saved" in page.inner_text("main")
    refused = token(broker, client_id, secret)
    assert refused.status_code == 403 and refused.json()["error"] == "ip_not_allowed"
    page.fill("#token_ip_ranges", "127.0.0.0/8")
    page.click("#save-policy")
    assert token(broker, client_id, secret).status_code == 200

    # Suspending alice refuses her hand-outs; reactivating restores them.
    page.goto(broker.url + "/admin/users")
    page.click("tr[data-email='alice@acme.test'] button.suspend")
    assert "alice@acme.test is suspended." in page.inner_text("main")
    suspended = token(broker, client_id, secret)
    assert suspended.status_code == 403 and suspended.json()["error"] == "user_suspended"
    page.click("tr[data-email='alice@acme.test'] button.reactivate")
    assert token(broker, client_id, secret).status_code == 200

    page.goto(broker.url + "/admin/connections")
    assert "alice@acme.test" in page.inner_text("#connections")
    page.screenshot(path=str(screenshots / "admin-05-connections.png"), full_page=True)
    page.goto(broker.url + "/admin/webhooks")
    page.screenshot(path=str(screenshots / "admin-06-webhooks.png"), full_page=True)
    page.goto(broker.url + "/admin/keys")
    page.click("#rotate-key-button")
    assert "version 2 now seals" in page.inner_text("main")
    page.screenshot(path=str(screenshots / "admin-07-keys.png"), full_page=True)

    worker.run(broker.app, once=True)  # without a worker the page rightly claims nothing
    page.goto(broker.url + "/admin/audit")
    assert "user.suspend" in page.inner_text("#events")
    assert "Chain verified" in page.inner_text("#verification")
    page.screenshot(path=str(screenshots / "admin-08-audit.png"), full_page=True)
    with page.expect_download() as pending:
        page.click("#export-csv")
    target = tmp_path / "audit.csv"
    pending.value.save_as(str(target))
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    handouts = [(r["outcome"], r["reason"]) for r in rows if r["action"] == "token.handout"]
    assert ("denied", "ip_not_allowed") in handouts
    assert ("denied", "user_suspended") in handouts
    assert {"policy.update", "client.create", "user.suspend", "key.rotate_tenant"} <= {
        r["action"] for r in rows
    }
    assert secret not in target.read_text(encoding="utf-8")


def test_the_overview_draws_hand_outs_and_refusals(
    page: Any, admin_broker: LiveBroker, screenshots: Path
) -> None:
    broker = admin_broker
    sign_in_admin(page, broker)
    assert page.inner_text("#connection-status [data-status=active] .tile-count") == "1"
    client_id, secret = create_client(page, broker, screenshots)
    for _ in range(3):
        assert token(broker, client_id, secret).status_code == 200
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    refused = httpx.post(  # a scope the client may not ask for: refused and audited
        broker.url + "/api/v1/token", headers={"Authorization": "Basic " + basic}, timeout=15,
        json={"user": "alice@acme.test", "scopes": [READONLY.replace("readonly", "send")]})
    assert refused.status_code == 403, refused.text
    page.goto(broker.url + "/admin/overview")
    # Drawn on the server as SVG (no script runs), and said again as a table.
    assert page.locator("#handouts-24h svg rect.series-served").count() == 1
    assert page.locator("#handouts-24h svg rect.series-refused").count() == 1
    cells = page.locator("#handouts-24h table tbody tr").last.locator("td").all_inner_texts()
    assert cells == ["3", "1"]
    assert "nightly-export" in page.inner_text("#clients")
    page.screenshot(path=str(screenshots / "admin-00-overview.png"), full_page=True)


def test_a_member_gets_the_refusal_page(
    page: Any, admin_broker: LiveBroker, screenshots: Path
) -> None:
    with get_db(admin_broker.app).transaction() as session:
        admin = session.scalars(select(User).where(User.email == ADMIN)).one()
        admin.role = "member"  # the invited admin, demoted before their first sign-in
    sign_in_admin_account(page, admin_broker)
    answer = page.goto(admin_broker.url + "/admin/policy")
    assert answer.status == 403
    assert "administrators" in page.inner_text("main")
    page.screenshot(path=str(screenshots / "admin-09-member-refused.png"), full_page=True)
