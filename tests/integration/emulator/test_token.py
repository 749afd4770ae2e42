"""The token and revocation endpoints: every error row of GOOGLE.md Part A, exactly."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.integration.emulator.support import (
    EMAIL,
    GMAIL_READONLY,
    NO_CACHE,
    Browser,
    OAuthClient,
    exchange,
    redirect_params,
    refresh,
)
from tests.plugins.emulator import EmulatorControls

EXPIRED = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
Minter = Callable[..., dict[str, str]]


@pytest.fixture
def mint(emulator: EmulatorControls, oauth_client: OAuthClient) -> Minter:
    """Return a function minting a grant for an account (created on first use)."""

    def minter(email: str = "alice@acme.test", scopes: list[str] | None = None) -> dict[str, str]:
        if not any(a["email"] == email for a in emulator.accounts()):
            emulator.add_account(email)
        return emulator.grant(email, oauth_client.client_id, scopes or ["email", GMAIL_READONLY])

    return minter


def _code(emulator: EmulatorControls, client: OAuthClient, browser: Browser, **params: str) -> str:
    emulator.settings(auto_consent="alice@acme.test")
    return redirect_params(browser.authorize(client, "openid email", **params))["code"]


def _assert_answer(response: requests.Response, status: int, body: dict[str, str]) -> None:
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers["Cache-Control"] == NO_CACHE
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Content-Type"].startswith("application/json")


def test_success_answers_carry_the_no_cache_headers(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    answer = refresh(emulator, oauth_client, mint()["refresh_token"])
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == NO_CACHE and answer.headers["Pragma"] == "no-cache"
    body = answer.json()
    assert "refresh_token" not in body
    assert list(body)[:2] == ["access_token", "expires_in"]


def test_code_used_twice(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    code = _code(emulator, oauth_client, browser)
    assert exchange(emulator, oauth_client, code).status_code == 200
    _assert_answer(
        exchange(emulator, oauth_client, code),
        400,
        {"error": "invalid_grant", "error_description": "Bad Request"},
    )


def test_code_expires_after_ten_minutes(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    code = _code(emulator, oauth_client, browser)
    emulator.clock(601)
    _assert_answer(
        exchange(emulator, oauth_client, code),
        400,
        {"error": "invalid_grant", "error_description": "Bad Request"},
    )


def test_malformed_code(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    _assert_answer(
        exchange(emulator, oauth_client, "not-a-code"),
        400,
        {"error": "invalid_grant", "error_description": "Malformed auth code."},
    )


@pytest.mark.parametrize(
    ("verifier", "description"),
    [(None, "Missing code verifier."), ("w" * 50, "Invalid code verifier.")],
)
def test_pkce_verifier_missing_or_wrong(
    emulator: EmulatorControls,
    oauth_client: OAuthClient,
    browser: Browser,
    verifier: str | None,
    description: str,
) -> None:
    challenge = create_s256_code_challenge("v" * 50)
    code = _code(
        emulator, oauth_client, browser, code_challenge=challenge, code_challenge_method="S256"
    )
    extra = {"code_verifier": verifier} if verifier else {}
    _assert_answer(
        exchange(emulator, oauth_client, code, **extra),
        400,
        {"error": "invalid_grant", "error_description": description},
    )
    # A failed attempt does not burn the code.
    assert exchange(emulator, oauth_client, code, code_verifier="v" * 50).status_code == 200


def test_redirect_uri_differs_from_the_authorize_request(
    emulator: EmulatorControls, oauth_client: OAuthClient, browser: Browser
) -> None:
    code = _code(emulator, oauth_client, browser)
    _assert_answer(
        exchange(emulator, oauth_client, code, redirect_uri=oauth_client.redirect_uri + "/other"),
        400,
        {"error": "redirect_uri_mismatch", "error_description": "Bad Request"},
    )


def test_wrong_secret_unknown_client_and_missing_parameter(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    token = mint()["refresh_token"]
    url = f"{emulator.url}/token"
    base = {"grant_type": "refresh_token", "refresh_token": token}
    wrong = requests.post(
        url, data={**base, "client_id": oauth_client.client_id, "client_secret": "nope"}, timeout=10
    )
    _assert_answer(wrong, 401, {"error": "invalid_client", "error_description": "Unauthorized"})
    unknown = requests.post(
        url, data={**base, "client_id": "ghost", "client_secret": "x"}, timeout=10
    )
    _assert_answer(
        unknown,
        401,
        {"error": "invalid_client", "error_description": "The OAuth client was not found."},
    )
    no_code = requests.post(
        url,
        data={
            "grant_type": "authorization_code",
            "redirect_uri": oauth_client.redirect_uri,
            **oauth_client.creds(),
        },
        timeout=10,
    )
    _assert_answer(
        no_code,
        400,
        {"error": "invalid_request", "error_description": "Missing required parameter: code"},
    )


def test_basic_client_authentication(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    pair = f"{oauth_client.client_id}:{oauth_client.client_secret}".encode()
    answer = requests.post(
        f"{emulator.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": mint()["refresh_token"]},
        headers={"Authorization": "Basic " + base64.b64encode(pair).decode()},
        timeout=10,
    )
    assert answer.status_code == 200


def test_bad_grant_type(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    answer = requests.post(
        f"{emulator.url}/token",
        data={"grant_type": "password", **oauth_client.creds()},
        timeout=10,
    )
    _assert_answer(
        answer,
        400,
        {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: password"},
    )


def test_refresh_token_of_another_client(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    emulator.add_client("other-client", "other-secret", ["http://127.0.0.1:9/cb"])
    other = OAuthClient("other-client", "other-secret", "http://127.0.0.1:9/cb")
    _assert_answer(
        refresh(emulator, other, mint()["refresh_token"]),
        401,
        {"error": "unauthorized_client", "error_description": "Unauthorized"},
    )


def test_refresh_with_a_narrower_scope_and_outside_the_grant(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    token = mint(scopes=["email", GMAIL_READONLY])["refresh_token"]
    narrow = refresh(emulator, oauth_client, token, scope=GMAIL_READONLY).json()
    assert narrow["scope"] == GMAIL_READONLY and "id_token" not in narrow
    info = requests.get(
        f"{emulator.url}/tokeninfo", params={"access_token": narrow["access_token"]}, timeout=10
    ).json()
    assert info["scope"] == GMAIL_READONLY
    outside = refresh(
        emulator, oauth_client, token, scope=f"{GMAIL_READONLY} https://mail.google.com/"
    )
    assert outside.status_code == 400
    assert outside.json()["error"] == "invalid_scope"
    assert "https://mail.google.com/" in outside.json()["error_description"]
    full = refresh(emulator, oauth_client, token).json()
    assert set(full["scope"].split()) == {"openid", EMAIL, GMAIL_READONLY}
    assert "id_token" in full


def test_user_revocation_kills_every_refresh_token(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    token = mint()["refresh_token"]
    emulator.revoke_account("alice@acme.test")
    _assert_answer(refresh(emulator, oauth_client, token), 400, EXPIRED)


def test_the_101st_refresh_token_evicts_the_oldest(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    tokens = [mint()["refresh_token"] for _ in range(101)]
    _assert_answer(refresh(emulator, oauth_client, tokens[0]), 400, EXPIRED)
    assert refresh(emulator, oauth_client, tokens[1]).status_code == 200
    assert refresh(emulator, oauth_client, tokens[-1]).status_code == 200
    # The limit is per account: another user's tokens do not count.
    assert refresh(emulator, oauth_client, mint("bob@acme.test")["refresh_token"]).ok


def test_a_lower_limit_from_the_settings(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    emulator.settings(refresh_token_limit=2)
    first, second, third = (mint()["refresh_token"] for _ in range(3))
    _assert_answer(refresh(emulator, oauth_client, first), 400, EXPIRED)
    assert refresh(emulator, oauth_client, second).ok and refresh(emulator, oauth_client, third).ok


def test_password_change_kills_only_gmail_scoped_refresh_tokens(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    gmail = mint(scopes=["email", GMAIL_READONLY])["refresh_token"]
    identity = mint(scopes=["openid", "email"])["refresh_token"]
    assert emulator.change_password("alice@acme.test") == {"refresh_tokens_revoked": 1}
    _assert_answer(refresh(emulator, oauth_client, gmail), 400, EXPIRED)
    assert refresh(emulator, oauth_client, identity).status_code == 200


def test_testing_app_refresh_tokens_expire(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    emulator.freeze()  # a second ticking between mint and refresh would make 10 a 9
    emulator.settings(testing_refresh_ttl=7 * 86400)
    grant = mint()
    assert grant["refresh_token_expires_in"] == 7 * 86400
    emulator.clock(7 * 86400 - 10)
    assert (
        refresh(emulator, oauth_client, grant["refresh_token"]).json()["refresh_token_expires_in"]
        == 10
    )
    emulator.clock(7 * 86400)
    _assert_answer(refresh(emulator, oauth_client, grant["refresh_token"]), 400, EXPIRED)


def test_refresh_tokens_unused_for_six_months_die(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    token = mint()["refresh_token"]
    emulator.clock(150 * 86400)
    assert refresh(emulator, oauth_client, token).ok  # use resets the six months
    emulator.clock(300 * 86400)
    assert refresh(emulator, oauth_client, token).ok
    emulator.clock(490 * 86400)
    _assert_answer(refresh(emulator, oauth_client, token), 400, EXPIRED)


def test_workspace_reauthentication_policy(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter, browser: Browser
) -> None:
    token = mint()["refresh_token"]
    emulator.require_reauth("alice@acme.test")
    _assert_answer(
        refresh(emulator, oauth_client, token),
        400,
        {
            "error": "invalid_grant",
            "error_description": "reauth related error (invalid_rapt)",
            "error_uri": "https://support.google.com/a/answer/9368756",
            "error_subtype": "invalid_rapt",
        },
    )
    _code(emulator, oauth_client, browser)  # signing in again clears the requirement
    assert refresh(emulator, oauth_client, token).status_code == 200


def test_revoke_kills_the_whole_grant(
    emulator: EmulatorControls, oauth_client: OAuthClient, mint: Minter
) -> None:
    emulator.add_client("second-client", "s2", ["http://127.0.0.1:9/cb"])
    first = mint()
    emulator.add_account("bob@acme.test")
    second = emulator.grant("alice@acme.test", "second-client", ["email"])
    bob = mint("bob@acme.test")
    answer = requests.post(
        f"{emulator.url}/revoke", data={"token": first["access_token"]}, timeout=10
    )
    assert answer.status_code == 200 and answer.content == b""
    _assert_answer(refresh(emulator, oauth_client, first["refresh_token"]), 400, EXPIRED)
    other = OAuthClient("second-client", "s2", "http://127.0.0.1:9/cb")
    _assert_answer(refresh(emulator, other, second["refresh_token"]), 400, EXPIRED)
    assert refresh(emulator, oauth_client, bob["refresh_token"]).ok
    again = requests.post(
        f"{emulator.url}/revoke", data={"token": first["refresh_token"]}, timeout=10
    )
    _assert_answer(
        again, 400, {"error": "invalid_token", "error_description": "Token expired or revoked"}
    )
