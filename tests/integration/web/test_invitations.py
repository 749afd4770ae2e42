"""Personal accounts join only the tenant they pick: no inviter captures them (issue 11, 1)."""

from __future__ import annotations

import datetime as dt
import html
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import ScriptInfo
from sqlalchemy import func, select, update

from broker.cli import cli
from broker.clock import utcnow
from broker.db import get_db
from broker.identity.sessions import digest
from broker.models import AuditEvent, Connection, OAuthTransaction, Tenant, User
from broker.tenancy import clients, users
from tests.factories import make_tenant
from tests.integration.emulator.support import parse_forms
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import (
    PUBLIC_URL,
    READONLY,
    WebBrowser,
    events,
    query,
    reasons,
    text,
)
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import basic

VICTIM = "victim@gmail.test"


@dataclass
class Rivals:
    """Two tenants that invited the same personal account; the attacker invited first."""

    app: Flask
    attacker: Tenant
    real: Tenant


def _invite(app: Flask, tenant: Tenant, email: str, *, age: dt.timedelta) -> None:
    with get_db(app).transaction() as session:
        invited = users.invite(session, tenant.id, email)
        invited.created_at = utcnow() - age


def _accounts(app: Flask, email: str) -> dict[str, User]:
    """Return the users of one address by tenant slug."""
    with get_db(app).transaction(write=False) as session:
        rows = session.execute(
            select(Tenant.slug, User).join(User, User.tenant_id == Tenant.id)
            .where(User.email == email)
        )
        return {slug: user for slug, user in rows}


def _client_token(app: Flask, tenant: Tenant, user: str) -> Any:
    """Ask for a user's token as a new API client of a tenant (a tenant's backend job)."""
    with get_db(app).transaction() as session:
        issued = clients.create_client(
            session, tenant, name=f"jobs-{uuid.uuid4().hex[:8]}", scopes=[READONLY]
        )
    return app.test_client().post(
        "/api/v1/token", json={"user": user, "scopes": ["gmail.readonly"]},
        headers={"Authorization": basic(issued.client_id, issued.client_secret)},
    )


def _choose(browser: WebBrowser, page: Any, label: str) -> Any:
    """Press a chooser button: a GET form, so the browser starts the URL it builds."""
    for form in parse_forms(text(page)):
        if any(label == button_text for _, _, button_text in form.buttons):
            return browser.get(form.action + "?" + urlencode(form.fields))
    raise AssertionError(f"no button {label!r}")


def _finish(browser: WebBrowser, emulator: EmulatorControls, answer: Any, email: str) -> Any:
    """Follow a started sign-in through Google as an account, consent skipped."""
    emulator.settings(auto_consent=email)
    try:
        return browser.follow(answer)
    finally:
        emulator.settings(auto_consent=None)


@pytest.fixture
def rivals(google_app: Flask, emulator: EmulatorControls) -> Rivals:
    """Tenant attacker invites victim@gmail.test a day before tenant real does."""
    attacker = make_tenant(google_app, "attacker", domains=("attacker.test",),
                           allow_consumer_accounts=True)
    real = make_tenant(google_app, "real", domains=("real.test",),
                       allow_consumer_accounts=True)
    with get_db(google_app).transaction() as session:
        for tenant, name in ((attacker, "Attacker Inc"), (real, "Real Org")):
            session.execute(update(Tenant).where(Tenant.id == tenant.id).values(name=name))
    _invite(google_app, attacker, VICTIM, age=dt.timedelta(days=1))
    _invite(google_app, real, VICTIM, age=dt.timedelta(0))
    emulator.add_account(VICTIM, name="Victim")
    return Rivals(google_app, attacker, real)


def test_a_plain_sign_in_binds_nothing_and_names_every_inviting_tenant(
    rivals: Rivals, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    page = sign_in(browser, emulator, VICTIM)
    body = text(page)
    assert page.status_code == 200 and "Choose an organization" in body
    assert "Attacker Inc" in body and "Real Org" in body
    buttons = {dict(form.fields)["tenant"]: dict(form.fields) for form in parse_forms(body)
               if form.action == "/auth/login"}
    assert buttons == {
        "attacker": {"tenant": "attacker", "login_hint": VICTIM},
        "real": {"tenant": "real", "login_hint": VICTIM},
    }
    accounts = _accounts(rivals.app, VICTIM)
    assert {slug: (u.google_sub, u.status) for slug, u in accounts.items()} == {
        "attacker": (None, "invited"), "real": (None, "invited"),
    }
    assert browser.get("/connections").status_code == 302  # no session either
    [choice] = events(rivals.app, "signin.refused")
    assert (choice.reason, choice.outcome, choice.tenant_id) == ("choose_tenant", "denied", None)
    assert choice.details == {"email": VICTIM, "tenants": ["attacker", "real"]}


def test_the_chosen_tenant_gets_the_person_and_the_first_inviter_never_does(
    rivals: Rivals, browser: WebBrowser, emulator: EmulatorControls
) -> None:
    chooser = sign_in(browser, emulator, VICTIM)
    started = _choose(browser, chooser, "Join Real Org")
    assert started.status_code == 302
    assert query(started.headers["Location"])["login_hint"] == VICTIM
    landed = _finish(browser, emulator, started, VICTIM)
    assert "My Gmail connection" in text(landed)
    accounts = _accounts(rivals.app, VICTIM)
    assert accounts["real"].status == "active" and accounts["real"].google_sub
    assert (accounts["attacker"].status, accounts["attacker"].google_sub) == ("invited", None)

    emulator.settings(auto_consent=True)
    browser.open(str(browser.get(f"/connections/connect?scope={READONLY}").headers["Location"]))
    emulator.settings(auto_consent=None)
    with get_db(rivals.app).transaction(write=False) as session:
        connection = session.scalar(select(Connection))
        assert connection is not None and connection.tenant_id == rivals.real.id

    # The attacker's jobs get nothing, by address or by the real user's id; the real ones do.
    for user in (VICTIM, str(accounts["real"].id)):
        refused = _client_token(rivals.app, rivals.attacker, user)
        assert refused.status_code in (403, 404) and "access_token" not in refused.json
    assert _client_token(rivals.app, rivals.real, VICTIM).status_code == 200

    # The attacker's own link cannot take the person over later either.
    lured = WebBrowser(rivals.app)
    page = _finish(lured, emulator, lured.get("/auth/login?tenant=attacker"), VICTIM)
    assert page.status_code == 403 and "tenant_mismatch" in text(page)
    assert _accounts(rivals.app, VICTIM)["attacker"].google_sub is None
    # Once joined, a plain sign-in goes straight in: no chooser.
    again = WebBrowser(rivals.app)
    assert "My Gmail connection" in text(sign_in(again, emulator, VICTIM))
    assert reasons(rivals.app, "signin.refused") == ["choose_tenant", "tenant_mismatch"]


def test_a_tenant_scoped_sign_in_joins_only_a_tenant_that_invited_the_person(
    rivals: Rivals, emulator: EmulatorControls
) -> None:
    app = rivals.app
    bystander = make_tenant(app, "bystander", allow_consumer_accounts=True)
    closed = make_tenant(app, "closed")  # invites, but admits no personal accounts
    _invite(app, closed, VICTIM, age=dt.timedelta(days=2))
    for slug in ("bystander", "closed"):
        browser = WebBrowser(app)
        page = _finish(browser, emulator, browser.get(f"/auth/login?tenant={slug}"), VICTIM)
        assert page.status_code == 403 and "not_invited" in text(page)
    assert all(u.google_sub is None for u in _accounts(app, VICTIM).values())
    assert set(_accounts(app, VICTIM)) == {"attacker", "real", "closed"}
    refusals = events(app, "signin.refused")
    assert [e.reason for e in refusals] == ["not_invited", "not_invited"]
    assert [e.details["signin_tenant_id"] for e in refusals] == [
        str(bystander.id), str(closed.id),
    ]


def test_workspace_accounts_keep_their_domain_tenant(
    acme: Tenant, google_app: Flask, emulator: EmulatorControls
) -> None:
    make_tenant(google_app, "globex", domains=("globex.test",), allow_consumer_accounts=True)
    elsewhere = WebBrowser(google_app)
    page = _finish(elsewhere, emulator, elsewhere.get("/auth/login?tenant=globex"),
                   "alice@acme.test")
    assert page.status_code == 403 and "tenant_mismatch" in text(page)
    assert _accounts(google_app, "alice@acme.test") == {}
    scoped = WebBrowser(google_app)
    done = _finish(scoped, emulator, scoped.get("/auth/login?tenant=acme"), "alice@acme.test")
    assert "My Gmail connection" in text(done)
    assert _accounts(google_app, "alice@acme.test")["acme"].status == "active"
    assert "My Gmail connection" in text(sign_in(WebBrowser(google_app), emulator,
                                                 "alice@acme.test"))
    bound = WebBrowser(google_app)
    page = _finish(bound, emulator, bound.get("/auth/login?tenant=globex"), "alice@acme.test")
    assert page.status_code == 403 and "tenant_mismatch" in text(page)
    assert reasons(google_app, "signin.refused") == ["tenant_mismatch", "tenant_mismatch"]


def test_the_transaction_records_the_tenant_and_passes_the_hint(
    acme: Tenant, browser: WebBrowser
) -> None:
    scoped = browser.get("/auth/login?tenant=acme&login_hint=alice%40acme.test")
    plain = WebBrowser(browser.app).get("/auth/login")
    assert query(scoped.headers["Location"])["login_hint"] == "alice@acme.test"
    assert "login_hint" not in query(plain.headers["Location"])
    with get_db(browser.app).transaction(write=False) as session:
        for answer, tenant_id in ((scoped, acme.id), (plain, None)):
            state = query(answer.headers["Location"])["state"]
            stored = session.get(OAuthTransaction, digest(state))
            assert stored is not None and stored.signin_tenant_id == tenant_id
            assert stored.tenant_id is None  # the verifier stays under the system key


@pytest.mark.parametrize(
    ("link", "status", "reason"),
    [
        ("tenant=nosuch", 404, "unknown_tenant"),
        ("tenant=Bad_Slug!", 400, "bad_signin_link"),
        ("tenant=", 400, "bad_signin_link"),
        ("tenant=acme&tenant=acme", 400, "bad_signin_link"),
        ("tenant=acme&login_hint=not+an+address", 400, "bad_signin_link"),
        ("login_hint=" + "a" * 70 + "%40gmail.test", 400, "bad_signin_link"),
    ],
)
def test_a_bad_sign_in_link_is_refused_on_a_page_and_stores_nothing(
    acme: Tenant, browser: WebBrowser, link: str, status: int, reason: str
) -> None:
    with get_db(browser.app).transaction(write=False) as session:
        audited = session.scalar(select(func.count()).select_from(AuditEvent))
    page = browser.get("/auth/login?" + link)
    assert page.status_code == status and page.mimetype == "text/html"
    assert f'<code id="reason">{reason}</code>' in text(page)
    with get_db(browser.app).transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(OAuthTransaction)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == audited


def test_admins_see_the_link_to_send_an_invited_personal_account(
    google_app: Flask, emulator: EmulatorControls
) -> None:
    real = make_tenant(google_app, "real", domains=("real.test",), admin="boss@real.test",
                       allow_consumer_accounts=True)
    workspace = make_tenant(google_app, "plain", domains=("plain.test",),
                            admin="boss@plain.test")
    _invite(google_app, real, VICTIM, age=dt.timedelta(0))
    _invite(google_app, workspace, "other@gmail.test", age=dt.timedelta(0))
    emulator.add_account("boss@real.test", hd="real.test")
    emulator.add_account("boss@plain.test", hd="plain.test")
    emulator.add_account(VICTIM)
    admin = WebBrowser(google_app)
    sign_in(admin, emulator, "boss@real.test")
    body = text(admin.get("/admin/users"))
    expected = f"{PUBLIC_URL}/auth/login?tenant=real&login_hint=victim%40gmail.test"
    assert html.escape(expected) in body
    assert body.count('class="signin-link"') == 1  # the bound admin needs no link
    # The link works as sent: the invited person lands in this tenant, with no chooser.
    person = WebBrowser(google_app)
    landed = _finish(person, emulator, person.get(expected.removeprefix(PUBLIC_URL)), VICTIM)
    assert "My Gmail connection" in text(landed)
    assert _accounts(google_app, VICTIM)["real"].status == "active"
    # A tenant that admits no personal accounts has no such link to send.
    other_admin = WebBrowser(google_app)
    sign_in(other_admin, emulator, "boss@plain.test")
    plain_body = text(other_admin.get("/admin/users"))
    assert "other@gmail.test" in plain_body and "signin-link" not in plain_body


def test_broker_user_invite_prints_the_link_only_where_personal_accounts_may_join(
    google_app: Flask,
) -> None:
    make_tenant(google_app, "real", allow_consumer_accounts=True)
    make_tenant(google_app, "plain")
    info = ScriptInfo(create_app=lambda: google_app)
    runner = CliRunner()
    personal = runner.invoke(cli, ["user", "invite", VICTIM, "--tenant", "real"], obj=info)
    assert personal.exit_code == 0, personal.output
    assert personal.output.splitlines() == [
        f"invited {VICTIM} to real as member",
        f"sign-in link to send: {PUBLIC_URL}/auth/login?tenant=real&login_hint=victim%40gmail.test",
    ]
    workspace = runner.invoke(cli, ["user", "invite", VICTIM, "--tenant", "plain"], obj=info)
    assert workspace.output.splitlines() == [f"invited {VICTIM} to plain as member"]
