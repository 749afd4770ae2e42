"""Fixtures of the admin page tests: a tenant, its admin signed in, a member, another tenant."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from broker.clock import utcnow
from broker.db import get_db
from broker.identity.sessions import SESSION_COOKIE, open_session
from broker.models import Policy, Tenant, User
from tests.factories import make_tenant, make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import broker_config

READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A test client holding one user's session cookie, with CSRF-aware form posts."""

    def __init__(self, app: Flask, user: User | None, remote_addr: str = "127.0.0.1") -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.environ = {"REMOTE_ADDR": remote_addr}
        self.user = user
        if user is not None:
            with get_db(app).transaction() as session:
                policy = session.get(Policy, user.tenant_id)
                assert policy is not None
                token = open_session(session, user, policy, now=utcnow(),
                                     ip=ipaddress.ip_address(remote_addr),
                                     user_agent="pytest")
            self.client.set_cookie(SESSION_COOKIE, token)

    def get(self, path: str, **kwargs: object) -> TestResponse:
        """GET a page."""
        return self.client.get(path, environ_base=self.environ, **kwargs)  # type: ignore[arg-type]

    def csrf(self, path: str = "/admin/users") -> str:
        """Return the CSRF token found on a page."""
        match = CSRF.search(self.get(path).get_data(as_text=True))
        assert match, "no CSRF token on " + path
        return match.group(1)

    def post(self, path: str, data: dict[str, object] | None = None, *,
             csrf: bool = True) -> TestResponse:
        """POST a form, with this session's CSRF token unless told otherwise."""
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf()
        return self.client.post(path, data=form, environ_base=self.environ)


@dataclass
class Org:
    """A tenant with a signed-in admin and an active member."""

    tenant: Tenant
    admin: User
    member: User


@pytest.fixture
def admin_app(make_app: Callable[..., Flask], emulator: EmulatorControls) -> Flask:
    """The broker app with the admin pages, its Google being the emulator."""
    return make_app(**broker_config(emulator))


@pytest.fixture
def org(admin_app: Flask) -> Org:
    """A tenant acme with admin boss@acme.test and member mia@acme.test."""
    tenant = make_tenant(admin_app, "acme", domains=("acme.test",), admin="boss@acme.test")
    with get_db(admin_app).transaction() as session:
        boss = session.scalars(select(User).where(User.email == "boss@acme.test")).one()
        boss.status, boss.google_sub, boss.last_login_at = "active", "sub-boss", utcnow()
    member = make_user(admin_app, tenant, "mia@acme.test")
    return Org(tenant, boss, member)


@pytest.fixture
def other(admin_app: Flask) -> Org:
    """A second tenant, globex, whose ids the first tenant's admin must never reach."""
    tenant = make_tenant(admin_app, "globex", domains=("globex.test",), admin="g@globex.test")
    boss = make_user(admin_app, tenant, "gboss@globex.test", role="admin")
    member = make_user(admin_app, tenant, "gmember@globex.test")
    return Org(tenant, boss, member)


@pytest.fixture
def make_browser(admin_app: Flask) -> Callable[..., Browser]:
    """Open browsers signed in as a user (or signed out with None)."""
    return lambda user, remote_addr="127.0.0.1": Browser(admin_app, user, remote_addr)


@pytest.fixture
def as_admin(org: Org, make_browser: Callable[..., Browser]) -> Browser:
    """A browser signed in as the tenant's admin."""
    return make_browser(org.admin)
