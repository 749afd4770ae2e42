"""Clients nobody here wrote: google-auth, google-api-python-client and authlib."""

from __future__ import annotations

import secrets

import google.auth.exceptions
import pytest
from authlib.integrations.requests_client import OAuth2Session
from google.auth.transport.requests import Request
from google.oauth2 import id_token as google_id_token
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.emulator.support import (
    EMAIL,
    GMAIL_READONLY,
    Browser,
    OAuthClient,
    redirect_params,
)
from tests.plugins.emulator import EmulatorControls


def _credentials(
    emulator: EmulatorControls, client: OAuthClient, grant: dict[str, str], **extra: object
) -> Credentials:
    return Credentials(
        token=None,
        refresh_token=grant["refresh_token"],
        token_uri=f"{emulator.url}/token",
        client_id=client.client_id,
        client_secret=client.client_secret,
        **extra,
    )


@pytest.fixture
def grant(emulator: EmulatorControls, oauth_client: OAuthClient) -> dict[str, str]:
    """A minted grant for alice with identity and Gmail read scopes."""
    emulator.add_account("alice@acme.test", name="Alice Smith")
    return emulator.grant(
        "alice@acme.test", oauth_client.client_id, ["openid", "email", GMAIL_READONLY]
    )


def test_google_auth_refreshes_a_minted_grant(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    credentials = _credentials(emulator, oauth_client, grant)
    credentials.refresh(Request())
    assert credentials.valid and credentials.token.startswith("ya29.")
    assert credentials.token != grant["access_token"]
    assert credentials.refresh_token == grant["refresh_token"]  # kept: no rotation
    assert credentials.id_token is not None
    narrow = _credentials(emulator, oauth_client, grant, scopes=[GMAIL_READONLY])
    narrow.refresh(Request())
    assert narrow.granted_scopes == [GMAIL_READONLY]


def test_google_auth_sees_a_revoked_grant_as_refresh_error(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    emulator.revoke_account("alice@acme.test")
    with pytest.raises(google.auth.exceptions.RefreshError) as caught:
        _credentials(emulator, oauth_client, grant).refresh(Request())
    assert "invalid_grant" in str(caught.value)
    assert caught.value.retryable is False


def test_google_auth_retries_a_temporarily_unavailable_token_endpoint(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    emulator.fault("token", status=503, body={"error": "temporarily_unavailable"})
    credentials = _credentials(emulator, oauth_client, grant)
    credentials.refresh(Request())
    assert credentials.valid
    assert emulator.calls()["token"]["refresh_token"] == 2


def test_google_auth_verifies_id_tokens_against_the_x509_certs(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    claims = google_id_token.verify_token(
        grant["id_token"],
        Request(),
        audience=oauth_client.client_id,
        certs_url=f"{emulator.url}/oauth2/v1/certs",
    )
    assert claims["email"] == "alice@acme.test" and claims["iss"] == emulator.url
    emulator.rotate_keys()
    again = google_id_token.verify_token(
        grant["id_token"],
        Request(),
        audience=oauth_client.client_id,
        certs_url=f"{emulator.url}/oauth2/v1/certs",
    )
    assert again["sub"] == claims["sub"]
    with pytest.raises(ValueError):
        google_id_token.verify_token(
            grant["id_token"],
            Request(),
            audience="someone-else",
            certs_url=f"{emulator.url}/oauth2/v1/certs",
        )


def test_google_auth_verifies_id_tokens_against_the_jwks(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    # google-auth reads a JWK Set only through PyJWT, which is an optional extra of it.
    pytest.importorskip("jwt")
    claims = google_id_token.verify_token(
        grant["id_token"],
        Request(),
        audience=oauth_client.client_id,
        certs_url=f"{emulator.url}/oauth2/v3/certs",
    )
    assert claims["sub"]


def test_google_api_client_reads_the_gmail_profile(
    emulator: EmulatorControls, oauth_client: OAuthClient, grant: dict[str, str]
) -> None:
    credentials = _credentials(emulator, oauth_client, grant)
    gmail = build(
        "gmail",
        "v1",
        credentials=credentials,
        static_discovery=True,
        client_options={"api_endpoint": emulator.url},
        cache_discovery=False,
    )
    request = gmail.users().getProfile(userId="me")
    assert request.uri.startswith(f"{emulator.url}/gmail/v1/users/me/profile")
    profile = request.execute()
    assert profile == {
        "emailAddress": "alice@acme.test",
        "messagesTotal": 123,
        "threadsTotal": 45,
        "historyId": "6789",
    }
    assert emulator.calls()["token"]["refresh_token"] == 1
    # An expired access token is refreshed by the library after Google's 401.
    emulator.expire()
    assert gmail.users().getProfile(userId="me").execute()["emailAddress"] == "alice@acme.test"
    assert emulator.calls()["token"]["refresh_token"] == 2


def test_google_api_client_surfaces_the_403_of_a_send_only_grant(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.add_account("alice@acme.test")
    send_only = emulator.grant(
        "alice@acme.test", oauth_client.client_id, ["https://www.googleapis.com/auth/gmail.send"]
    )
    gmail = build(
        "gmail",
        "v1",
        credentials=_credentials(emulator, oauth_client, send_only),
        static_discovery=True,
        client_options={"api_endpoint": emulator.url},
    )
    with pytest.raises(HttpError) as caught:
        gmail.users().getProfile(userId="me").execute()
    assert caught.value.status_code == 403
    assert caught.value.reason == "Request had insufficient authentication scopes."


def test_authlib_runs_the_code_flow_with_pkce(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.add_account("alice@acme.test")
    session = OAuth2Session(
        oauth_client.client_id,
        oauth_client.client_secret,
        scope=f"openid email {GMAIL_READONLY}",
        redirect_uri=oauth_client.redirect_uri,
        code_challenge_method="S256",
    )
    verifier = secrets.token_urlsafe(48)
    url, state = session.create_authorization_url(
        f"{emulator.url}/o/oauth2/v2/auth",
        code_verifier=verifier,
        access_type="offline",
        nonce="n-0S6_WzA2Mj",
    )
    browser = Browser(emulator.url)
    assert browser.open(url).status_code == 200
    browser.choose("alice@acme.test")
    callback = browser.click("Allow")
    params = redirect_params(callback)
    assert params["state"] == state and params["iss"] == emulator.url

    token = session.fetch_token(
        f"{emulator.url}/token",
        authorization_response=callback.headers["Location"],
        code_verifier=verifier,
    )
    assert token["refresh_token"].startswith("1//")
    assert set(token["scope"].split()) == {"openid", EMAIL, GMAIL_READONLY}
    jwks = session.get(f"{emulator.url}/oauth2/v3/certs").json()
    claims = jwt.decode(token["id_token"], KeySet.import_key_set(jwks)).claims
    assert claims["nonce"] == "n-0S6_WzA2Mj" and claims["aud"] == oauth_client.client_id

    profile = session.get(f"{emulator.url}/gmail/v1/users/me/profile")
    assert profile.json()["emailAddress"] == "alice@acme.test"
    refreshed = session.refresh_token(f"{emulator.url}/token")
    assert refreshed["access_token"] != token["access_token"]
    revoked = session.revoke_token(f"{emulator.url}/revoke", token["refresh_token"])
    assert revoked.status_code == 200
