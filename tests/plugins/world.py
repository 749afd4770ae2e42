"""Fixtures of the token API tests: a broker wired to the emulator, tenants, clients, grants."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from broker.db import get_db
from broker.models import Connection, Tenant, User
from broker.scopes import normalise, parse_google
from broker.tenancy import clients
from tests.factories import make_connection, make_tenant, make_user
from tests.plugins.emulator import EmulatorControls

GOOGLE_CLIENT_ID = "broker-api-tests.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "broker-api-tests-secret"
PUBLIC_URL = "http://127.0.0.1:8080"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"


def basic(client_id: str, secret: str) -> str:
    """Return an HTTP Basic header value."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def broker_config(emulator: EmulatorControls, **overrides: Any) -> dict[str, Any]:
    """Return settings that point the broker at the emulator."""
    emulator.add_client(GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, [PUBLIC_URL + "/auth/callback"])
    return {
        "GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID,
        "GOOGLE_CLIENT_SECRET": GOOGLE_CLIENT_SECRET,
        "GOOGLE_DISCOVERY_URL": emulator.url + "/.well-known/openid-configuration",
        "GMAIL_API_URL": emulator.url,
        "PUBLIC_URL": PUBLIC_URL,
        "GOOGLE_TIMEOUT": 2,
        "REFRESH_BUDGET": 3,
        **overrides,
    }


@pytest.fixture
def api_app(make_app: Callable[..., Flask], emulator: EmulatorControls) -> Flask:
    """A broker app whose Google is the emulator."""
    return make_app(**broker_config(emulator))


@dataclass
class World:
    """One tenant with a connected user and an API client, ready to ask for tokens."""

    app: Flask
    emulator: EmulatorControls
    tenant: Tenant
    user: User
    connection: Connection | None
    client_id: str
    client_secret: str
    refresh_token: str = ""

    @property
    def auth(self) -> str:
        """Return the client's Basic header."""
        return basic(self.client_id, self.client_secret)

    def token(
        self, body: dict[str, Any] | None = None, *, ip: str = "203.0.113.7",
        headers: dict[str, str] | None = None, client: FlaskClient | None = None,
    ) -> TestResponse:
        """POST /api/v1/token as this world's client."""
        body = {"user": self.user.email} if body is None else body
        return (client or self.app.test_client()).post(
            "/api/v1/token", json=body, headers={"Authorization": self.auth, **(headers or {})},
            environ_base={"REMOTE_ADDR": ip},
        )

    def add_client(self, scopes: list[str], ip_ranges: tuple[str, ...] = ()) -> tuple[str, str]:
        """Create another API client of the tenant; return its id and secret."""
        with get_db(self.app).transaction() as session:
            tenant = session.get(Tenant, self.tenant.id)
            assert tenant is not None
            # Client names are unique per tenant, and a world may add several clients.
            issued = clients.create_client(
                session, tenant, name=f"job-{uuid.uuid4().hex[:8]}", scopes=scopes,
                ip_ranges=ip_ranges,
            )
        return issued.client_id, issued.client_secret


def connect(app: Flask, emulator: EmulatorControls, user: User, scopes: list[str]) -> tuple[
    Connection, str
]:
    """Grant scopes at the emulator and store the connection; return it and its refresh token."""
    emulator.add_account(user.email, sub=user.google_sub)
    answer = emulator.grant(user.email, GOOGLE_CLIENT_ID, scopes)
    refresh = str(answer["refresh_token"])
    granted = normalise(parse_google(answer["scope"]))
    return make_connection(app, user, refresh_token=refresh, scopes=granted), refresh


@pytest.fixture
def make_world(
    api_app: Flask, emulator: EmulatorControls
) -> Callable[..., World]:
    """Build a world: grant `granted` to a user, create a client allowed `allowed`."""

    def factory(
        granted: list[str] | None = None, allowed: list[str] | None = None,
        ip_ranges: tuple[str, ...] = (), connected: bool = True, app: Flask | None = None,
    ) -> World:
        target = app or api_app
        tenant = make_tenant(target)
        user = make_user(target, tenant)
        connection, refresh = (None, "")
        if connected:
            connection, refresh = connect(target, emulator, user, granted or [READONLY, SEND])
        world = World(target, emulator, tenant, user, connection, "", "", refresh)
        world.client_id, world.client_secret = world.add_client(allowed or [READONLY], ip_ranges)
        return world

    return factory


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """A connected user (readonly + send) and a client allowed readonly."""
    return make_world()

