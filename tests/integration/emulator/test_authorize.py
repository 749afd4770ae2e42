"""The authorization endpoint: pages, consent rules, prompts and the redirect back."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.integration.emulator.support import (
    EMAIL,
    GMAIL_LABELS,
    GMAIL_READONLY,
    GMAIL_SEND,
    Browser,
    OAuthClient,
    exchange,
    parse_forms,
    redirect_params,
)
from tests.plugins.emulator import EmulatorControls

SCOPE = f"openid email {GMAIL_READONLY}"


def test_chooser_and_consent_pages_follow_the_contract(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test", name="Alice Smith")
    page = browser.authorize(oauth_client, SCOPE, state="s1")
    assert page.status_code == 200
    assert "not Google" in page.text
    assert '<button type="submit" class="account" name="email" value="alice@acme.test">' in (
        page.text
    )
    another = [f for f in parse_forms(page.text) if any(n == "email" for n, _ in f.fields)]
    assert another and ("Continue" in [t for _, _, t in another[0].buttons])

    page = browser.choose("alice@acme.test")
    assert page.status_code == 200 and "not Google" in page.text
    assert f'<input type="checkbox" name="scope" value="{GMAIL_READONLY}" checked>' in page.text
    # Identity scopes are not untickable: only the Gmail scope gets a checkbox.
    assert page.text.count('type="checkbox"') == 1
    texts = [t for form in parse_forms(page.text) for _, _, t in form.buttons]
    assert "Allow" in texts and "Cancel" in texts


def test_success_redirect_carries_code_state_scope_and_iss(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, SCOPE, state="xyz", access_type="offline")
    browser.choose("alice@acme.test")
    params = redirect_params(browser.click("Allow"))
    assert params["state"] == "xyz"
    assert params["iss"] == emulator.url
    assert params["code"].startswith("4/") and "/" in params["code"]
    assert set(params["scope"].split()) == {"openid", EMAIL, GMAIL_READONLY}
    token = exchange(emulator, oauth_client, params["code"]).json()
    assert token["access_token"].startswith("ya29.")
    assert token["refresh_token"].startswith("1//")
    assert set(token["scope"].split()) == {"openid", EMAIL, GMAIL_READONLY}
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3599
    assert "id_token" in token and "refresh_token_expires_in" not in token


def test_typing_an_unknown_address_creates_the_account(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    browser.authorize(oauth_client, "openid email")
    browser.choose("new@example.test")
    redirect_params(browser.click("Allow"))
    assert [a["email"] for a in emulator.accounts()] == ["new@example.test"]


def test_cancel_redirects_access_denied_with_state(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, SCOPE, state="st")
    browser.choose("alice@acme.test")
    assert redirect_params(browser.click("Cancel")) == {"error": "access_denied", "state": "st"}


def test_granular_consent_grants_only_ticked_scopes(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, f"email {GMAIL_READONLY} {GMAIL_SEND}", access_type="offline")
    browser.choose("alice@acme.test")
    params = redirect_params(browser.click("Allow", untick=(GMAIL_SEND,)))
    token = exchange(emulator, oauth_client, params["code"]).json()
    assert set(token["scope"].split()) == {"openid", EMAIL, GMAIL_READONLY}


def test_refresh_token_only_for_offline_access_after_a_shown_consent(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, SCOPE)  # online
    browser.choose("alice@acme.test")
    first = exchange(emulator, oauth_client, redirect_params(browser.click("Allow"))["code"])
    assert "refresh_token" not in first.json()

    # Already granted and offline, but no consent screen: still no refresh token.
    params = redirect_params(browser.authorize(oauth_client, SCOPE, access_type="offline"))
    assert params["prompt"] == "none"
    assert "refresh_token" not in exchange(emulator, oauth_client, params["code"]).json()

    browser.authorize(oauth_client, SCOPE, access_type="offline", prompt="consent")
    params = redirect_params(browser.click("Allow"))
    assert params["prompt"] == "consent"
    assert "refresh_token" in exchange(emulator, oauth_client, params["code"]).json()


def test_include_granted_scopes_adds_earlier_grants(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, "openid email")
    browser.choose("alice@acme.test")
    redirect_params(browser.click("Allow"))

    browser.authorize(oauth_client, GMAIL_LABELS, include_granted_scopes="true")
    params = redirect_params(browser.click("Allow"))
    assert set(params["scope"].split()) == {"openid", EMAIL, GMAIL_LABELS}

    browser.authorize(oauth_client, GMAIL_READONLY)
    params = redirect_params(browser.click("Allow"))
    assert params["scope"] == GMAIL_READONLY


def test_prompt_none_errors_follow_oidc(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    emulator.add_account("bob@acme.test")
    no_session = redirect_params(browser.authorize(oauth_client, SCOPE, prompt="none", state="a"))
    assert no_session == {"error": "login_required", "state": "a"}

    browser.authorize(oauth_client, "openid email")
    browser.choose("alice@acme.test")
    redirect_params(browser.click("Allow"))
    needs_consent = redirect_params(browser.authorize(oauth_client, SCOPE, prompt="none"))
    assert needs_consent == {"error": "consent_required"}
    silent = redirect_params(browser.authorize(oauth_client, "openid email", prompt="none"))
    assert "code" in silent and silent["prompt"] == "none"

    browser.authorize(oauth_client, "openid email", prompt="select_account")
    browser.choose("bob@acme.test")
    browser.click("Allow")
    ambiguous = redirect_params(browser.authorize(oauth_client, "openid", prompt="none"))
    assert ambiguous == {"error": "interaction_required"}
    hinted = browser.authorize(oauth_client, "openid", prompt="none", login_hint="bob@acme.test")
    assert "code" in redirect_params(hinted)


def test_select_account_shows_the_chooser_despite_a_session(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    browser.authorize(oauth_client, "openid")
    browser.choose("alice@acme.test")
    redirect_params(browser.click("Allow"))
    assert browser.authorize(oauth_client, "openid").status_code == 302
    page = browser.authorize(oauth_client, "openid", prompt="select_account")
    assert page.status_code == 200 and "Choose an account" in page.text
    assert redirect_params(browser.choose("alice@acme.test"))["code"]


def test_workspace_account_gets_hd_on_the_redirect(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("carol@corp.test", hd="corp.test")
    browser.authorize(oauth_client, "openid email")
    browser.choose("carol@corp.test")
    assert redirect_params(browser.click("Allow"))["hd"] == "corp.test"


def test_auto_consent_skips_both_pages_and_counts_as_shown(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.add_account("alice@acme.test")
    emulator.settings(auto_consent="alice@acme.test")
    params = redirect_params(
        browser.authorize(oauth_client, SCOPE, access_type="offline", state="q")
    )
    assert params["state"] == "q" and params["prompt"] == "consent"
    assert "refresh_token" in exchange(emulator, oauth_client, params["code"]).json()

    emulator.settings(auto_consent=True)
    hinted = browser.authorize(oauth_client, "openid email", login_hint="hint@acme.test")
    token = exchange(emulator, oauth_client, redirect_params(hinted)["code"]).json()
    assert "hint@acme.test" in [a["email"] for a in emulator.accounts()]
    assert token["id_token"]

    emulator.settings(auto_consent=None)
    assert Browser(emulator.url).authorize(oauth_client, "openid").status_code == 200


def test_pkce_s256_and_plain(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    emulator.settings(auto_consent="alice@acme.test")
    verifier = "v" * 50
    params = redirect_params(
        browser.authorize(
            oauth_client,
            "openid",
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
    )
    assert exchange(emulator, oauth_client, params["code"], code_verifier=verifier).ok
    # Without a method the challenge is the verifier itself ("plain").
    params = redirect_params(browser.authorize(oauth_client, "openid", code_challenge=verifier))
    assert exchange(emulator, oauth_client, params["code"], code_verifier=verifier).ok


@pytest.mark.parametrize(
    ("query", "status", "error", "text"),
    [
        ({"client_id": "nobody"}, 401, "invalid_client", "The OAuth client was not found."),
        ({"redirect_uri": "http://127.0.0.1:9/oauth/callback/"}, 400, "redirect_uri_mismatch", ""),
        ({"redirect_uri": "HTTP://127.0.0.1:9/oauth/callback"}, 400, "redirect_uri_mismatch", ""),
        ({"scope": ""}, 400, "invalid_request", "Missing required parameter: scope"),
        (
            {"response_type": ""},
            400,
            "invalid_request",
            "Missing required parameter: response_type",
        ),
        ({"scope": "openid bogus"}, 400, "invalid_scope", "bogus"),
        ({"prompt": "none consent"}, 400, "invalid_request", "Invalid prompt"),
    ],
)
def test_bad_requests_stay_on_the_error_page(
    emulator: EmulatorControls,
    oauth_client: OAuthClient,
    browser: Browser,
    query: dict[str, str],
    status: int,
    error: str,
    text: str,
) -> None:
    params = {
        "client_id": oauth_client.client_id,
        "redirect_uri": oauth_client.redirect_uri,
        "response_type": "code",
        "scope": "openid",
        "state": "s",
        **query,
    }
    page = browser.open(f"{emulator.url}/o/oauth2/v2/auth", **params)
    assert page.status_code == status
    assert "Location" not in page.headers
    assert f"Error {status}: {error}" in page.text and text in page.text
    assert "not Google" in page.text


def test_missing_client_id_is_a_missing_parameter(
    emulator: EmulatorControls, browser: Browser
) -> None:
    page = browser.open(f"{emulator.url}/o/oauth2/v2/auth", scope="openid")
    assert page.status_code == 400
    assert "Missing required parameter: client_id" in page.text


def test_a_forged_form_post_is_refused(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    browser.authorize(oauth_client, "openid")
    url = browser.page.url if browser.page else ""
    forged = browser.session.post(url, data={"step": "choose", "email": "x@y.test", "csrf": "no"})
    assert forged.status_code == 400 and "form expired" in forged.text
