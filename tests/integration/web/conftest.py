"""Fixtures of the browser-flow tests: the broker wired to the emulator, tenants, browsers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from broker.models import Tenant
from tests.conftest import Clock
from tests.factories import make_tenant
from tests.integration.web.support import CLIENT_ID, CLIENT_SECRET, PUBLIC_URL, WebBrowser
from tests.plugins.emulator import EmulatorControls


def google_settings(emulator_base: str, public_url: str) -> dict[str, Any]:
    """Return the settings that point a broker at the emulator."""
    return {
        "GOOGLE_CLIENT_ID": CLIENT_ID,
        "GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
        "GOOGLE_DISCOVERY_URL": emulator_base + "/.well-known/openid-configuration",
        "PUBLIC_URL": public_url,
    }


def register_broker(emulator: EmulatorControls, public_url: str) -> None:
    """Register the broker's OAuth client and its two redirect URIs with the emulator."""
    emulator.add_client(
        CLIENT_ID, CLIENT_SECRET,
        [public_url + "/auth/callback", public_url + "/connections/callback"],
    )


@pytest.fixture
def make_google_app(
    make_app: Callable[..., Flask], emulator: EmulatorControls, clock: Clock
) -> Callable[..., Flask]:
    """Build brokers that use the emulator as Google, on the test clock."""

    def factory(public_url: str = PUBLIC_URL, **overrides: Any) -> Flask:
        register_broker(emulator, public_url)
        app = make_app(**{**google_settings(emulator.url, public_url), **overrides})
        app.extensions["broker.clock"] = clock
        app.config["BROKER_CANONICAL_HOST"] = True
        return app

    return factory


@pytest.fixture
def google_app(make_google_app: Callable[..., Flask]) -> Flask:
    """A broker that uses the emulator as Google."""
    return make_google_app()


@pytest.fixture
def acme(google_app: Flask, emulator: EmulatorControls) -> Tenant:
    """A Workspace tenant acme.test with an account alice@acme.test at the emulator."""
    tenant = make_tenant(google_app, "acme", domains=("acme.test",), admin="admin@acme.test")
    emulator.add_account("alice@acme.test", hd="acme.test", name="Alice")
    return tenant


@pytest.fixture
def browser(google_app: Flask) -> WebBrowser:
    """A fresh browser."""
    return WebBrowser(google_app)


@pytest.fixture
def signed_in(
    acme: Tenant, browser: WebBrowser, emulator: EmulatorControls
) -> WebBrowser:
    """A browser signed in as alice@acme.test."""
    sign_in(browser, emulator, "alice@acme.test")
    return browser


def sign_in(browser: WebBrowser, emulator: EmulatorControls, email: str) -> Any:
    """Sign in as an account, consent skipped; return the page landed on."""
    emulator.settings(auto_consent=email)
    try:
        return browser.open("/auth/login")
    finally:
        emulator.settings(auto_consent=None)
