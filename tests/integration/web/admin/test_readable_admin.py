"""Admin pages offer only what can be done, and say how an action went by its kind."""

from __future__ import annotations

import re

from flask import Flask

from tests.integration.web.admin.conftest import Browser, Org


def row(body: str, email: str) -> str:
    start = body.index(f'data-email="{email}"')
    return body[start: body.index("</tr>", start)]


def test_invitations_offer_no_suspend_or_end_sessions(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    assert as_admin.post("/admin/users", {"email": "new@acme.test"}).status_code == 303
    body = as_admin.get("/admin/users").get_data(as_text=True)
    invited = row(body, "new@acme.test")
    assert "invited" in invited
    assert 'class="suspend' not in invited and 'class="end-sessions"' not in invited
    member = row(body, "mia@acme.test")
    assert 'class="suspend' in member and 'class="end-sessions"' in member


def test_the_last_admin_is_not_offered_make_member(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert "Make member" not in row(body, "boss@acme.test")
    assert "Make admin" in row(body, "mia@acme.test")
    as_admin.post(f"/admin/users/{org.member.id}/role", {"role": "admin"})
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert "Make member" in row(body, "boss@acme.test")
    assert "Make member" in row(body, "mia@acme.test")


def test_admin_flash_messages_say_their_kind(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    as_admin.post(f"/admin/users/{org.member.id}/suspend")
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert 'class="flash flash-success" role="status"' in body
    assert "mia@acme.test is suspended." in body
    # Demoting the last admin (a forged form: the page does not offer it) is an error.
    as_admin.post(f"/admin/users/{org.admin.id}/role", {"role": "member"})
    body = as_admin.get("/admin/users").get_data(as_text=True)
    assert 'class="flash flash-error" role="alert"' in body and "cannot be demoted" in body
    as_admin.post("/admin/policy", {**_policy(as_admin)})
    body = as_admin.get("/admin/policy").get_data(as_text=True)
    assert 'class="flash flash-info"' in body and "Nothing changed." in body


def _policy(browser: Browser) -> dict[str, object]:
    """Return the policy form's current values, as the page would post them."""
    body = browser.get("/admin/policy").get_data(as_text=True)
    form: dict[str, object] = {}
    for name, value in re.findall(r'<input type="text" id="[^"]+" name="([^"]+)" value="([^"]*)"',
                                  body):
        form[name] = value
    for name in re.findall(r'<textarea id="[^"]+" name="([^"]+)">', body):
        match = re.search(rf'name="{name}">([^<]*)</textarea>', body)
        form[name] = match.group(1) if match else ""
    form["offered_scopes"] = re.findall(
        r'name="offered_scopes" value="([^"]+)" checked', body)
    for flag in re.findall(r'name="([a-z_]+)" value="on" checked', body):
        form[flag] = "on"
    return form
