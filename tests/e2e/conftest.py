"""End-to-end fixtures: the broker served on 127.0.0.1, the emulator on localhost, Chromium."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import make_server

from broker.db import get_db
from broker.emulator.server import QuietQueryHandler
from broker.models import Tenant
from broker.scopes import normalise, parse_google
from broker.tenancy import clients
from tests.conftest import Clock
from tests.factories import make_connection, make_tenant, make_user
from tests.integration.web.conftest import google_settings, register_broker
from tests.integration.web.support import CLIENT_ID
from tests.plugins.emulator import EmulatorControls

CHROMIUM = "/usr/bin/chromium"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
ADMIN = "admin@acme.test"


@dataclass
class LiveBroker:
    """A broker serving real HTTP, and the app behind it."""

    url: str
    app: Flask


@pytest.fixture
def live_broker(
    make_app: Callable[..., Flask], emulator: EmulatorControls, clock: Clock
) -> Iterator[LiveBroker]:
    """Serve a broker (threaded) whose Google is the emulator at `localhost`."""
    target: dict[str, Flask] = {}

    def dispatch(environ: Any, start_response: Any) -> Any:
        return target["app"](environ, start_response)

    # Bind first: the public URL (and so the redirect URIs) needs the port.
    server = make_server("127.0.0.1", 0, dispatch, threaded=True,
                         request_handler=QuietQueryHandler)
    url = f"http://127.0.0.1:{server.port}"
    register_broker(emulator, url)
    app = make_app(**google_settings(emulator.localhost_url, url))
    app.extensions["broker.clock"] = clock
    target["app"] = app
    tenant = make_tenant(app, "acme", domains=("acme.test",), admin="admin@acme.test")
    # A job that reads and sends: the consent form pre-ticks only scopes some job uses.
    with get_db(app).transaction() as session:
        clients.create_client(session, tenant, name="e2e-job", scopes=[READONLY, SEND])
    emulator.add_account("alice@acme.test", hd="acme.test", name="Alice")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveBroker(url, app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Launch Debian's Chromium once per run (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (own cookies) and page."""
    context = chromium.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Return where screenshots go: $BROKER_TEST_OUTPUT/e2e (default test-output/e2e)."""
    folder = Path(os.environ.get("BROKER_TEST_OUTPUT", "test-output")) / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def admin_broker(live_broker: LiveBroker, emulator: EmulatorControls) -> LiveBroker:
    """The live broker with the admin pages, its admin's Google account and a connected alice."""
    emulator.add_account(ADMIN, hd="acme.test", name="Ada Admin")
    sub = next(a["sub"] for a in emulator.accounts() if a["email"] == "alice@acme.test")
    with get_db(live_broker.app).transaction(write=False) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "acme")).one()
    alice = make_user(live_broker.app, tenant, "alice@acme.test", google_sub=sub)
    answer = emulator.grant("alice@acme.test", CLIENT_ID, [READONLY])
    make_connection(live_broker.app, alice, refresh_token=str(answer["refresh_token"]),
                    scopes=normalise(parse_google(answer["scope"])))
    return live_broker


def sign_in_admin(page: Any, broker: LiveBroker) -> None:
    """Sign in as the tenant's invited admin through the emulator and open the console."""
    sign_in_admin_account(page, broker)
    page.goto(broker.url + "/admin")
    page.wait_for_url(broker.url + "/admin/overview")


def sign_in_admin_account(page: Any, broker: LiveBroker) -> None:
    """Sign in with the invited admin's Google account; land on the connection page."""
    page.goto(broker.url + "/")
    page.click("#signin")
    page.wait_for_load_state()
    if not page.url.startswith(broker.url):
        page.click(f"button[value='{ADMIN}']")
        page.wait_for_load_state()
    if not page.url.startswith(broker.url):
        page.click("button[value='allow']")
    page.wait_for_url(broker.url + "/connections")
