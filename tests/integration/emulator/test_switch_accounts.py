"""Switching accounts, as at Google: the chooser marks who is signed in, the consent screen
offers another account, and signing out of the emulator makes the next sign-in ask again."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.integration.emulator.support import (
    GMAIL_READONLY,
    Browser,
    OAuthClient,
    redirect_params,
)
from tests.plugins.emulator import EmulatorControls


def _signed_in_as(browser: Browser, client: OAuthClient, email: str) -> None:
    browser.authorize(client, "openid email")
    browser.choose(email)
    redirect_params(browser.click("Allow"))


def test_after_signing_out_the_next_sign_in_asks_which_account(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("admin@acme.test")
    emulator.add_account("alice@acme.test")
    _signed_in_as(browser, oauth_client, "alice@acme.test")
    # One consented account in the session: Google goes straight back, as before.
    assert browser.authorize(oauth_client, "openid email").status_code == 302

    signed_out = browser.open(f"{emulator.url}/Logout")
    assert signed_out.status_code == 200 and "You are signed out" in signed_out.text
    assert browser.session.cookies.get("emulator_session") is None
    chooser = browser.authorize(oauth_client, "openid email")
    assert chooser.status_code == 200 and "Choose an account" in chooser.text
    assert "Signed in" not in chooser.text and 'id="sign-out"' not in chooser.text
    browser.choose("admin@acme.test")
    params = redirect_params(browser.click("Allow"))
    assert params["code"]


def test_the_chooser_lists_signed_in_accounts_first_and_signs_them_out(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("admin@acme.test")
    emulator.add_account("zed@acme.test")
    _signed_in_as(browser, oauth_client, "zed@acme.test")
    page = browser.authorize(oauth_client, "openid email", prompt="select_account")
    assert page.text.index("zed@acme.test · Signed in") < page.text.index("admin@acme.test")
    assert "Use another account" in page.text
    back = browser.click("Sign out of all accounts")
    # Back to the same request, now with nobody signed in: the chooser again.
    assert back.status_code == 303
    assert urlsplit(back.headers["Location"]).path == "/o/oauth2/v2/auth"
    again = browser.open(emulator.url + back.headers["Location"])
    assert again.status_code == 200 and "Signed in" not in again.text


def test_the_consent_screen_offers_another_account(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    _signed_in_as(browser, oauth_client, "alice@acme.test")
    consent = browser.authorize(oauth_client, f"openid email {GMAIL_READONLY}", state="s9")
    assert consent.status_code == 200 and "alice@acme.test" in consent.text
    link = consent.text.split('id="switch-account"')[0].rsplit('href="', 1)[1].split('"')[0]
    query = parse_qs(urlsplit(link.replace("&amp;", "&")).query)
    assert query["prompt"] == ["select_account"] and query["state"] == ["s9"]
    chooser = browser.open(emulator.url + link.replace("&amp;", "&"))
    assert chooser.status_code == 200 and "Choose an account" in chooser.text
    consent = browser.choose("bob@acme.test")  # "Use another account": typed, then consent
    assert 'id="account">bob@acme.test' in consent.text
    params = redirect_params(browser.click("Allow"))
    assert params["state"] == "s9"


def test_sign_out_never_redirects_off_the_emulator(
    emulator: EmulatorControls, browser: Browser
) -> None:
    for target in ("https://evil.test/", "//evil.test/", "/\\evil.test/"):
        answer = browser.open(f"{emulator.url}/Logout", **{"continue": target})
        assert answer.status_code == 200 and "You are signed out" in answer.text
