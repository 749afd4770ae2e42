"""Discovery, keys, tokeninfo, userinfo and the Gmail profile, over real HTTP."""

from __future__ import annotations

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.emulator.support import (
    EMAIL,
    GMAIL_LABELS,
    GMAIL_READONLY,
    GMAIL_SEND,
    PROFILE,
    OAuthClient,
)
from tests.plugins.emulator import EmulatorControls

GMAIL_401_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def _grant(
    emulator: EmulatorControls, client: OAuthClient, scopes: list[str], **account: str
) -> dict[str, str]:
    emulator.add_account("alice@acme.test", name="Alice Smith", **account)
    return emulator.grant("alice@acme.test", client.client_id, scopes)


def _profile(emulator: EmulatorControls, token: str | None, user: str = "me") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(
        f"{emulator.url}/gmail/v1/users/{user}/profile", headers=headers, timeout=10
    )


def test_discovery_points_at_endpoints_that_answer(emulator: EmulatorControls) -> None:
    for base in (emulator.url, emulator.localhost_url):
        document = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
        assert document["issuer"] == base
        assert document["id_token_signing_alg_values_supported"] == ["RS256"]
        assert set(document["code_challenge_methods_supported"]) == {"plain", "S256"}
        assert {"client_secret_post", "client_secret_basic"} <= set(
            document["token_endpoint_auth_methods_supported"]
        )
        for key in (
            "authorization_endpoint",
            "token_endpoint",
            "revocation_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
        ):
            assert document[key].startswith(base + "/")
            answer = requests.get(document[key], timeout=10)
            assert answer.status_code != 404, key
        assert requests.get(document["jwks_uri"], timeout=10).json()["keys"]


def test_id_token_claims_and_key_rotation(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    grant = _grant(emulator, oauth_client, ["openid", "email", "profile"], hd="acme.test")
    keys = KeySet.import_key_set(requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10).json())
    token = jwt.decode(grant["id_token"], keys, algorithms=["RS256"])
    claims = token.claims
    assert token.header["alg"] == "RS256" and token.header["kid"]
    assert claims["iss"] == emulator.url
    assert claims["aud"] == claims["azp"] == oauth_client.client_id
    assert claims["email"] == "alice@acme.test" and claims["email_verified"] is True
    assert claims["hd"] == "acme.test" and claims["name"] == "Alice Smith"
    assert claims["given_name"] == "Alice" and claims["family_name"] == "Smith"
    assert claims["exp"] - claims["iat"] == 3600 and claims["at_hash"]
    assert requests.get(claims["picture"], timeout=10).status_code == 200

    old_kid = token.header["kid"]
    rotated = emulator.rotate_keys()
    assert rotated["kid"] != old_kid and old_kid in rotated["published"]
    new = emulator.grant("alice@acme.test", oauth_client.client_id, ["openid"])
    jwks = requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10).json()
    assert jwt.decode(new["id_token"], KeySet.import_key_set(jwks)).header["kid"] == rotated["kid"]
    for _ in range(3):
        emulator.rotate_keys()
    kids = [
        k["kid"] for k in requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10).json()["keys"]
    ]
    assert len(kids) == 3 and old_kid not in kids


def test_tokeninfo_answers_strings(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    grant = _grant(emulator, oauth_client, ["email", GMAIL_READONLY])
    for method in ("GET", "POST"):
        info = requests.request(
            method,
            f"{emulator.url}/tokeninfo",
            params={"access_token": grant["access_token"]},
            timeout=10,
        ).json()
        assert set(info) == {
            "azp",
            "aud",
            "sub",
            "scope",
            "exp",
            "expires_in",
            "email",
            "email_verified",
            "access_type",
        }
        assert all(isinstance(v, str) for v in info.values())
        assert info["email_verified"] == "true" and info["access_type"] == "offline"
        assert 3500 < int(info["expires_in"]) <= 3599
    gmail_only = emulator.grant("alice@acme.test", oauth_client.client_id, [GMAIL_READONLY])
    info = requests.get(
        f"{emulator.url}/tokeninfo", params={"access_token": gmail_only["access_token"]}, timeout=10
    ).json()
    assert "sub" not in info and "email" not in info
    id_info = requests.get(
        f"{emulator.url}/tokeninfo", params={"id_token": grant["id_token"]}, timeout=10
    ).json()
    assert id_info["email_verified"] == "true" and id_info["alg"] == "RS256"


def test_tokeninfo_invalid(emulator: EmulatorControls) -> None:
    answer = requests.get(
        f"{emulator.url}/tokeninfo", params={"access_token": "ya29.nope"}, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_token", "error_description": "Invalid Value"}


def test_userinfo_follows_the_scopes(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    grant = _grant(emulator, oauth_client, ["openid", "email"])
    info = requests.get(
        f"{emulator.url}/v1/userinfo",
        headers={"Authorization": f"Bearer {grant['access_token']}"},
        timeout=10,
    ).json()
    assert info["email"] == "alice@acme.test" and info["email_verified"] is True
    assert "name" not in info
    bad = requests.get(
        f"{emulator.url}/v1/userinfo", headers={"Authorization": "Bearer x"}, timeout=10
    )
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    profile = emulator.grant("alice@acme.test", oauth_client.client_id, [PROFILE])
    info = requests.get(
        f"{emulator.url}/v1/userinfo",
        headers={"Authorization": f"Bearer {profile['access_token']}"},
        timeout=10,
    ).json()
    assert info["name"] == "Alice Smith" and "email" not in info
    assert EMAIL not in profile["scope"].split()


def test_gmail_profile_with_each_kind_of_scope(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    _grant(emulator, oauth_client, ["email"], messages_total="7", threads_total=3, history_id="42")
    for scope in (
        "https://mail.google.com/",
        GMAIL_READONLY,
        "https://www.googleapis.com/auth/gmail.metadata",
    ):
        token = emulator.grant("alice@acme.test", oauth_client.client_id, [scope])
        answer = _profile(emulator, token["access_token"])
        assert answer.status_code == 200, scope
        assert answer.json() == {
            "emailAddress": "alice@acme.test",
            "messagesTotal": 7,
            "threadsTotal": 3,
            "historyId": "42",
        }
    by_address = _profile(emulator, token["access_token"], "alice@acme.test")
    assert by_address.status_code == 200
    assert _profile(emulator, token["access_token"], "bob@acme.test").status_code == 403


def test_gmail_profile_refuses_send_and_labels_scopes(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    token = _grant(emulator, oauth_client, [GMAIL_SEND, GMAIL_LABELS])["access_token"]
    answer = _profile(emulator, token)
    assert answer.status_code == 403
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="https://accounts.google.com/"')
    assert 'error="insufficient_scope"' in challenge
    error = answer.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["message"] == "Request had insufficient authentication scopes."
    assert error["errors"][0]["reason"] == "insufficientPermissions"
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


def test_gmail_profile_bad_and_expired_tokens(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    token = _grant(emulator, oauth_client, [GMAIL_READONLY])["access_token"]
    assert _profile(emulator, token).status_code == 200
    emulator.expire("alice@acme.test")
    for candidate in (token, "ya29.garbage"):
        answer = _profile(emulator, candidate)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == (
            'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        )
        assert answer.json() == {
            "error": {
                "code": 401,
                "message": GMAIL_401_MESSAGE,
                "errors": [
                    {
                        "message": "Invalid Credentials",
                        "domain": "global",
                        "reason": "authError",
                        "location": "Authorization",
                        "locationType": "header",
                    }
                ],
                "status": "UNAUTHENTICATED",
            }
        }
    missing = _profile(emulator, None)
    assert missing.status_code == 401 and missing.json()["error"]["status"] == "UNAUTHENTICATED"


def test_access_tokens_expire_after_the_configured_lifetime(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.freeze()  # otherwise "59 seconds later" is 60 when a second ticks after the grant
    emulator.settings(access_token_lifetime=60)
    grant = _grant(emulator, oauth_client, [GMAIL_READONLY])
    assert grant["expires_in"] == 60
    emulator.clock(59)
    assert _profile(emulator, grant["access_token"]).status_code == 200
    emulator.clock(60)
    assert _profile(emulator, grant["access_token"]).status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/gmail/v1/users/me/nothing"),
        ("GET", "/gmail/v2/users/me/profile"),
        ("POST", "/gmail/v1/users/me/profile"),
        ("POST", "/upload/gmail/v1/users/me/drafts"),
    ],
)
def test_unknown_gmail_api_paths_answer_googles_json_404(
    emulator: EmulatorControls, method: str, path: str
) -> None:
    answer = requests.request(method, emulator.url + path, timeout=10)
    assert answer.status_code == 404
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {
        "error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}
    }
