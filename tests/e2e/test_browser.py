"""People in a real browser: sign in, connect, disconnect, timeouts and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from broker.db import get_db
from broker.models import Policy
from tests.conftest import Clock
from tests.e2e.conftest import LiveBroker
from tests.plugins.emulator import EmulatorControls

pytestmark = pytest.mark.e2e
SEND = "https://www.googleapis.com/auth/gmail.send"


def sign_in(page: Any, broker: LiveBroker, shots: Path | None = None) -> None:
    """Sign in as alice through the emulator's chooser and consent pages."""
    page.goto(broker.url + "/")
    if shots:
        page.screenshot(path=str(shots / "01-landing.png"), full_page=True)
    page.click("#signin")
    page.wait_for_load_state()
    chooser = page.locator("button[value='alice@acme.test']")
    if not page.url.startswith(broker.url) and chooser.count():
        page.click("button[value='alice@acme.test']")  # the account chooser
        page.wait_for_load_state()
    if not page.url.startswith(broker.url):
        if shots:
            page.screenshot(path=str(shots / "02-google-consent-signin.png"), full_page=True)
        page.click("button[value='allow']")
    page.wait_for_url(broker.url + "/connections")


def test_sign_in_connect_and_disconnect(
    page: Any, live_broker: LiveBroker, emulator: EmulatorControls, screenshots: Path
) -> None:
    sign_in(page, live_broker, screenshots)
    assert "alice@acme.test" in page.inner_text("header")
    page.screenshot(path=str(screenshots / "03-connections-empty.png"), full_page=True)
    page.click("#connect")
    page.screenshot(path=str(screenshots / "04-google-consent-gmail.png"), full_page=True)
    page.click("button[value='allow']")
    page.wait_for_url(live_broker.url + "/connections")
    assert "Gmail is connected." in page.inner_text("main")
    assert "Not granted" not in page.inner_text("main")
    assert page.inner_text("#status").startswith("Active")
    page.screenshot(path=str(screenshots / "05-connections-connected.png"), full_page=True)
    before = emulator.calls()["revoke"]
    page.click("#disconnect")
    page.screenshot(path=str(screenshots / "06-disconnect-confirm.png"), full_page=True)
    page.click("#confirm-disconnect")
    page.wait_for_url(live_broker.url + "/connections")
    assert "revoked at Google" in page.inner_text("main")
    assert emulator.calls()["revoke"] == before + 1
    page.screenshot(path=str(screenshots / "07-disconnected.png"), full_page=True)


def test_unticked_scope_is_reported(
    page: Any, live_broker: LiveBroker, screenshots: Path
) -> None:
    sign_in(page, live_broker)
    page.click("#connect")
    page.uncheck(f"input[name='scope'][value='{SEND}']")
    page.click("button[value='allow']")
    page.wait_for_url(live_broker.url + "/connections")
    assert "Not granted: Send email on your behalf (gmail.send)" in page.inner_text("main")
    assert "gmail.send" not in page.inner_text("#granted")
    page.screenshot(path=str(screenshots / "08-partial-grant.png"), full_page=True)


def test_idle_timeout_and_absolute_expiry(
    page: Any, live_broker: LiveBroker, clock: Clock
) -> None:
    sign_in(page, live_broker)
    clock.advance(minutes=31)
    page.goto(live_broker.url + "/connections")
    assert page.url == live_broker.url + "/"
    assert "inactivity" in page.inner_text("main")
    sign_in(page, live_broker)
    for _ in range(17):
        clock.advance(minutes=29)
        page.goto(live_broker.url + "/connections")
    assert page.url == live_broker.url + "/"
    assert "maximum length" in page.inner_text("main")


def test_refusals_ip_range_and_replayed_callback(
    page: Any, live_broker: LiveBroker, screenshots: Path
) -> None:
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/auth/callback" in r.url else None)
    sign_in(page, live_broker)
    page.goto(callbacks[0])
    assert "already used" in page.inner_text("h1")
    assert page.inner_text("#reason") == "state_replayed"
    page.screenshot(path=str(screenshots / "09-refused-replay.png"), full_page=True)
    page.context.clear_cookies()
    with get_db(live_broker.app).transaction() as session:
        session.execute(update(Policy).values(login_ip_ranges=["10.0.0.0/8"]))
    page.goto(live_broker.url + "/")
    page.click("#signin")
    page.click("button[value='alice@acme.test']")
    page.wait_for_selector("#reason")
    assert page.inner_text("#reason") == "ip_not_allowed"
    assert "not allowed from this network" in page.inner_text("h1")
    page.screenshot(path=str(screenshots / "10-refused-ip.png"), full_page=True)
