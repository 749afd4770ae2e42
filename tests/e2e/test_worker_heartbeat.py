"""In Chromium: an admin page warns in amber while no worker runs, and is quiet once one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import worker
from tests.e2e.conftest import LiveBroker, sign_in_admin

pytestmark = pytest.mark.e2e
AMBER = "rgb(122, 77, 0)"


def test_pages_warn_in_amber_until_the_worker_runs(
    admin_broker: LiveBroker, page: Any, screenshots: Path  # noqa: F811 - the fixture
) -> None:
    sign_in_admin(page, admin_broker)
    for path in ("/admin/audit", "/admin/keys", "/admin/webhooks"):
        page.goto(admin_broker.url + path)
        late = page.locator("#worker-late")
        assert late.is_visible()
        assert "The worker has not run on this broker yet" in late.inner_text()
        assert late.evaluate("e => getComputedStyle(e).color") == AMBER
    assert "Chain verified" not in page.goto(admin_broker.url + "/admin/audit").text()
    page.screenshot(path=str(screenshots / "worker-not-running-audit.png"), full_page=True)

    worker.run(admin_broker.app, once=True)
    page.reload()
    assert page.locator("#worker-late").count() == 0
    assert "Chain verified" in page.inner_text("#verification")
