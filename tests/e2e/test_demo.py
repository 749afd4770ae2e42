"""The README's first command: the demo's printed account signs in and connects, and its
printed curl line then returns a token."""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cli.test_demo import start_demo

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Run `broker demo` on free ports; yield its URL and everything it printed."""
    process, port, _, printed = start_demo(tmp_path / "instance")
    try:
        yield f"http://127.0.0.1:{port}", printed
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)


def _curl_request(line: str) -> httpx.Response:
    """Do what the printed curl line does (-u, -H, -d, URL), with httpx."""
    words = shlex.split(line)
    user, secret = words[words.index("-u") + 1].split(":", 1)
    body = words[words.index("-d") + 1]
    return httpx.post(words[-1], content=body, auth=(user, secret),
                      headers={"Content-Type": "application/json"}, timeout=30)


def test_printed_account_signs_in_connects_and_curl_gets_a_token(
    demo: tuple[str, str], page: Any, screenshots: Path
) -> None:
    url, printed = demo
    account = re.search(r"sign in as\s+(\S+)", printed)
    curl = re.search(r"^curl .*$", printed, re.MULTILINE)
    assert account and curl, printed
    before = _curl_request(curl.group(0))
    assert before.status_code in (403, 404) and before.json()["error"] in {
        "not_connected", "unknown_user", "login_required"}
    page.goto(url + "/")
    page.click("#signin")
    page.click(f"button[value='{account.group(1)}']")
    page.wait_for_load_state()
    if not page.url.startswith(url):
        page.click("button[value='allow']")
    page.wait_for_url(url + "/connections")
    page.click("#connect")
    page.click("button[value='allow']")
    page.wait_for_url(url + "/connections")
    assert page.inner_text("#status").startswith("Active")
    page.screenshot(path=str(screenshots / "demo-connected.png"), full_page=True)
    answer = _curl_request(curl.group(0))
    assert answer.status_code == 200, answer.text
    token = answer.json()
    assert token["access_token"].startswith("ya29.") and token["user"]["email"] == account.group(1)
    assert token["scopes"] == ["https://www.googleapis.com/auth/gmail.readonly"] or (
        "https://www.googleapis.com/auth/gmail.send" not in token["scopes"])
    # The second printed line calls Gmail through the broker: messages, and no token.
    words = shlex.split(re.findall(r"^curl .*$", printed, re.MULTILINE)[1])
    user, secret = words[words.index("-u") + 1].split(":", 1)
    listed = httpx.get(words[-1], auth=(user, secret), timeout=30)
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["messages"]) == 3 and "ya29." not in listed.text


def sign_in(page: Any, url: str, email: str) -> None:
    """README steps 1-2: Sign in with Google, choose the account, allow the first consent."""
    page.goto(url + "/")
    page.click("#signin")
    assert page.inner_text("h1") == "Choose an account"
    page.click(f"button[value='{email}']")
    page.wait_for_load_state()
    assert page.url.startswith(url) or page.inner_text("#account").startswith(email)
    if not page.url.startswith(url):
        page.click("button[value='allow']")
    page.wait_for_url(url + "/connections")


def connect_gmail(page: Any, url: str) -> None:
    """README step 3: Connect Gmail with the scopes kept ticked, and Allow at the emulator."""
    page.click("#connect")
    assert "/auth/gmail.readonly" in page.inner_text("#consent")
    page.click("button[value='allow']")
    page.wait_for_url(url + "/connections")
    assert page.inner_text("#status").startswith("Active")


def test_readme_try_it_steps_one_to_five_in_one_browser(
    demo: tuple[str, str], page: Any, screenshots: Path
) -> None:
    url, printed = demo
    curl = re.search(r"^curl .*$", printed, re.MULTILINE)
    emulator_signout = re.search(r"(http://localhost:\d+/Logout)", printed)
    assert curl and emulator_signout, printed

    sign_in(page, url, "alice@demo.test")
    assert "Gmail is not connected" in page.inner_text("main")
    connect_gmail(page, url)
    assert "Gmail is connected" in page.inner_text("main")
    page.screenshot(path=str(screenshots / "try-it-3-connected.png"), full_page=True)
    token = _curl_request(curl.group(0))
    assert token.status_code == 200 and token.json()["scopes"] == [
        "https://www.googleapis.com/auth/gmail.readonly"]

    # Step 5 in the same browser: out of the broker, out of the emulator, in as the admin.
    page.click("header button:has-text('Sign out')")
    page.wait_for_url(url + "/")
    page.goto(emulator_signout.group(1))
    assert page.inner_text("h1") == "You are signed out"
    sign_in(page, url, "admin@demo.test")
    page.click("header a:has-text('Admin')")
    page.wait_for_url(url + "/admin/**")
    assert "admin@demo.test" in page.inner_text("header")
    page.goto(url + "/admin/audit")
    # The demo runs the worker: no amber "has not run" notice, and nothing unverified claimed.
    assert page.locator("#worker-late").count() == 0
    assert "FAILED" not in page.inner_text("#verification")
    page.screenshot(path=str(screenshots / "try-it-5-admin-audit.png"), full_page=True)
