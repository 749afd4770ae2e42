"""The policy page: every field validated and normalised, lock-out guard, audited diffs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.models import AuditEvent, Policy
from tests.integration.web.admin.conftest import READONLY, SEND, Browser, Org


def form(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "session_max_age": "8h", "session_idle_timeout": "30m", "login_ip_ranges": "",
        "token_ip_ranges": "", "handout_login_max_age": "", "retention_days": "",
        "offered_scopes": [READONLY, SEND],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def policy(app: Flask, org: Org) -> Policy:
    with get_db(app).transaction(write=False) as session:
        row = session.get(Policy, org.tenant.id)
        assert row is not None
        return row


def test_the_form_shows_the_current_policy(as_admin: Browser) -> None:
    body = as_admin.get("/admin/policy").get_data(as_text=True)
    assert 'name="session_max_age" value="8h"' in body
    assert 'name="session_idle_timeout" value="30m"' in body
    assert body.count('name="offered_scopes"') == 10


def test_saving_normalises_and_audits_before_and_after(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    answer = as_admin.post("/admin/policy", form(
        session_max_age="12h", session_idle_timeout="45m", handout_login_max_age="7d",
        token_ip_ranges="10.1.2.3/8, 2001:db8::1/32\n198.51.100.7", retention_days="90",
        keep_connected="on", lock_session_to_ip="on", allow_broader_tokens="on",
        login_ip_ranges="127.0.0.0/8",
    ))
    assert answer.status_code == 303
    saved = policy(admin_app, org)
    assert saved.session_max_age == 12 * 3600 and saved.session_idle_timeout == 45 * 60
    assert saved.handout_login_max_age == 7 * 86400 and saved.retention_days == 90
    assert saved.token_ip_ranges == ["10.0.0.0/8", "2001:db8::/32", "198.51.100.7/32"]
    assert saved.login_ip_ranges == ["127.0.0.0/8"]
    assert saved.offered_scopes == [READONLY, SEND]
    assert saved.keep_connected and saved.lock_session_to_ip and saved.allow_broader_tokens
    with get_db(admin_app).transaction(write=False) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "policy.update")
        ).one()
    assert event.actor_type == "admin" and event.actor_id == str(org.admin.id)
    assert event.details["before"]["session_max_age"] == 8 * 3600
    assert event.details["after"]["session_max_age"] == 12 * 3600
    assert event.details["after"]["token_ip_ranges"][0] == "10.0.0.0/8"
    assert "Policy saved" in as_admin.get("/admin/policy").get_data(as_text=True)


def test_every_bad_field_is_reported_and_nothing_is_saved(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    answer = as_admin.post("/admin/policy", form(
        session_max_age="eight hours", session_idle_timeout="1s",
        token_ip_ranges="10.0.0.0/33", login_ip_ranges="not-an-ip",
        handout_login_max_age="400d", retention_days="-3",
        offered_scopes=[READONLY, "https://www.googleapis.com/auth/drive"],
    ))
    assert answer.status_code == 400
    body = answer.get_data(as_text=True)
    for name in ("session_max_age", "session_idle_timeout", "token_ip_ranges",
                 "login_ip_ranges", "handout_login_max_age", "retention_days",
                 "offered_scopes"):
        assert f'id="error-{name}"' in body, name
    assert 'value="eight hours"' in body  # what was typed comes back for correction
    assert policy(admin_app, org).session_max_age == 8 * 3600


def test_idle_timeout_may_not_exceed_the_session(as_admin: Browser) -> None:
    answer = as_admin.post("/admin/policy", form(session_max_age="1h",
                                                 session_idle_timeout="2h"))
    assert answer.status_code == 400
    assert 'id="error-session_idle_timeout"' in answer.get_data(as_text=True)


def test_locking_out_the_admins_own_address_needs_confirmation(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    refused = as_admin.post("/admin/policy", form(login_ip_ranges="203.0.113.0/24"))
    assert refused.status_code == 409
    assert 'id="lockout-warning"' in refused.get_data(as_text=True)
    assert policy(admin_app, org).login_ip_ranges == []
    confirmed = as_admin.post("/admin/policy", form(login_ip_ranges="203.0.113.0/24",
                                                    confirm_lockout="yes"))
    assert confirmed.status_code == 303
    assert policy(admin_app, org).login_ip_ranges == ["203.0.113.0/24"]
    # The admin's own session now fails the policy: the next page sends them away.
    assert as_admin.get("/admin/policy").status_code == 302


def test_ranges_that_keep_the_admins_address_need_no_confirmation(
    admin_app: Flask, org: Org, make_browser: Callable[..., Browser]
) -> None:
    browser = make_browser(org.admin, "192.0.2.10")
    answer = browser.post("/admin/policy", form(login_ip_ranges="192.0.2.0/24"))
    assert answer.status_code == 303
    assert policy(admin_app, org).login_ip_ranges == ["192.0.2.0/24"]


def test_an_unchanged_form_writes_no_audit_event(admin_app: Flask, as_admin: Browser) -> None:
    as_admin.post("/admin/policy", form(offered_scopes=[
        "https://www.googleapis.com/auth/gmail." + s
        for s in ("readonly", "send", "modify", "compose", "labels", "metadata")
    ]))
    with get_db(admin_app).transaction(write=False) as session:
        assert not list(session.scalars(
            select(AuditEvent).where(AuditEvent.action == "policy.update")
        ))


def test_durations_need_a_unit(as_admin: Browser) -> None:
    answer = as_admin.post("/admin/policy", form(session_max_age="480"))
    assert answer.status_code == 400
    assert "a duration like 30m" in answer.get_data(as_text=True)


def test_the_credential_change_flag_is_saved_and_audited(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    body = as_admin.get("/admin/policy").get_data(as_text=True)
    assert 'name="end_sessions_on_credential_change"' in body
    answer = as_admin.post("/admin/policy", form(
        end_sessions_on_credential_change="on"))
    assert answer.status_code == 303
    assert policy(admin_app, org).end_sessions_on_credential_change is True
    with get_db(admin_app).transaction(write=False) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "policy.update")
        ).one()
    assert event.details["after"]["end_sessions_on_credential_change"] is True
