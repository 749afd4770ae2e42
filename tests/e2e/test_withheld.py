"""In a real browser: untick a permission, see it withheld, then remove it at Google."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from broker.db import get_db
from broker.models import Connection
from tests.e2e.conftest import LiveBroker
from tests.e2e.test_browser import sign_in
from tests.plugins.emulator import EmulatorControls

pytestmark = pytest.mark.e2e
LABELS = "https://www.googleapis.com/auth/gmail.labels"
BOX = f"input[name='scope'][value='{LABELS}']"


def test_untick_withholds_and_remove_at_google_asks_again(
    page: Any, live_broker: LiveBroker, emulator: EmulatorControls, screenshots: Path
) -> None:
    sign_in(page, live_broker)
    page.check(BOX)  # no job uses labels, so the consent form leaves it unticked
    page.click("#connect")
    page.click("button[value='allow']")
    page.wait_for_url(live_broker.url + "/connections")
    assert "gmail.labels" in page.inner_text("#granted")

    page.uncheck(BOX)
    page.click("#connect")  # "Update access": nothing to add, so Google is not visited
    page.wait_for_url(live_broker.url + "/connections")
    assert "Jobs can no longer use: See and edit your labels" in page.inner_text("main")
    assert "gmail.labels" in page.inner_text("#withheld")
    assert "gmail.labels" not in page.inner_text("#granted")
    assert not page.is_checked(BOX)
    page.screenshot(path=str(screenshots / "connection-withheld-scope.png"), full_page=True)

    page.click("#remove-at-google")
    assert "revoke its whole access" in page.inner_text("#steps")
    assert "gmail.labels" in page.inner_text("#removed")
    assert "gmail.labels" not in page.inner_text("#kept")
    page.screenshot(path=str(screenshots / "connection-remove-at-google.png"), full_page=True)
    revokes = emulator.calls()["revoke"]
    page.click("#confirm-remove")
    page.wait_for_selector("button[value='allow']")  # Google's consent screen, shown again
    assert emulator.calls()["revoke"] == revokes + 1
    assert page.locator(BOX).count() == 0  # Google is asked only for the kept set
    page.click("button[value='allow']")
    page.wait_for_url(live_broker.url + "/connections")
    assert "Gmail is connected." in page.inner_text("main")
    assert page.locator("#withheld").count() == 0
    assert "gmail.labels" not in page.inner_text("#granted")
    with get_db(live_broker.app).transaction(write=False) as session:
        connection = session.scalars(select(Connection)).one()
    assert LABELS not in connection.granted_scopes and connection.withheld_scopes == []
