"""broker.google against the emulator over real HTTP: calls, classification, id_tokens."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from broker.config import load_settings
from broker.emulator import Emulator
from broker.google import client as client_module
from broker.google.client import JWKS_REFETCH_COOLDOWN, Google, GoogleError, IdTokenError
from broker.scopes import PREFIX
from tests.plugins.emulator import EmulatorControls

READ, SEND = PREFIX + "gmail.readonly", PREFIX + "gmail.send"
CLIENT_ID, SECRET = "broker-test.apps.googleusercontent.com", "broker-test-secret"


@pytest.fixture
def google(emulator) -> Google:  # type: ignore[no-untyped-def]
    emulator.add_client(CLIENT_ID, SECRET, ["http://127.0.0.1:8080/auth/callback"])
    settings = load_settings(
        {"GOOGLE_CLIENT_ID": CLIENT_ID, "GOOGLE_CLIENT_SECRET": SECRET,
         "GOOGLE_DISCOVERY_URL": emulator.url + "/.well-known/openid-configuration",
         "GOOGLE_TIMEOUT": 2},
        environ={},
    )
    return Google(settings)


@pytest.fixture
def grant(emulator) -> dict:  # type: ignore[no-untyped-def, type-arg]
    emulator.add_client(CLIENT_ID, SECRET, ["http://127.0.0.1:8080/auth/callback"])
    emulator.add_account("alice@acme.test", hd="acme.test")
    return emulator.grant("alice@acme.test", CLIENT_ID, ["openid", "email", READ, SEND])  # type: ignore[no-any-return]


def test_refresh_and_narrowed_refresh(google: Google, grant: dict, emulator) -> None:  # type: ignore[no-untyped-def, type-arg]
    full = google.refresh(grant["refresh_token"])
    assert full.access_token.startswith("ya29.") and full.expires_in > 3000
    assert {READ, SEND} <= set(full.scopes)
    narrow = google.refresh(grant["refresh_token"], [READ])
    assert READ in narrow.scopes and SEND not in narrow.scopes
    assert emulator.calls()["token"]["refresh_token"] == 2
    assert "ya29" not in repr(narrow)


def test_failures_are_classified_on_error_codes(google: Google, grant: dict, emulator) -> None:  # type: ignore[no-untyped-def, type-arg]
    emulator.fault("token", status=503, body={"error": "backendError"})
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"])
    assert info.value.kind == "transient"
    emulator.fault("token", mode="close")
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"])
    assert info.value.kind == "transient"
    emulator.fault("token", status=307, body={})
    with pytest.raises(GoogleError):
        google.refresh(grant["refresh_token"])
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"], [PREFIX + "gmail.modify"])
    assert info.value.kind == "invalid_scope"
    emulator.require_reauth("alice@acme.test")
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"])
    assert (info.value.kind, info.value.error_subtype) == ("invalid_grant", "invalid_rapt")
    emulator.revoke_account("alice@acme.test")
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"])
    assert (info.value.kind, info.value.error) == ("invalid_grant", "invalid_grant")
    assert grant["refresh_token"] not in str(info.value)


def test_wrong_client_secret_is_misconfiguration(emulator, grant: dict) -> None:  # type: ignore[no-untyped-def, type-arg]
    settings = load_settings(
        {"GOOGLE_CLIENT_ID": CLIENT_ID, "GOOGLE_CLIENT_SECRET": "wrong",
         "GOOGLE_DISCOVERY_URL": emulator.url + "/.well-known/openid-configuration"},
        environ={},
    )
    with pytest.raises(GoogleError) as info:
        Google(settings).refresh(grant["refresh_token"])
    assert info.value.kind == "misconfigured"


def test_timeout_is_transient_and_bounded(google: Google, grant: dict, emulator) -> None:  # type: ignore[no-untyped-def, type-arg]
    emulator.fault("token", mode="hang")
    started = time.monotonic()
    with pytest.raises(GoogleError) as info:
        google.refresh(grant["refresh_token"], timeout=0.5)
    assert info.value.kind == "transient"
    assert time.monotonic() - started < 3


def test_revoke_kills_the_grant_and_twice_is_fine(google: Google, grant: dict) -> None:  # type: ignore[type-arg]
    google.revoke(grant["refresh_token"])
    google.revoke(grant["refresh_token"])
    with pytest.raises(GoogleError):
        google.refresh(grant["refresh_token"])


def test_id_token_is_verified(google: Google, grant: dict, emulator) -> None:  # type: ignore[no-untyped-def, type-arg]
    claims = google.verify_id_token(grant["id_token"])
    assert claims["email"] == "alice@acme.test" and claims["hd"] == "acme.test"
    with pytest.raises(IdTokenError, match="nonce"):
        google.verify_id_token(grant["id_token"], nonce="other")
    header, payload, signature = grant["id_token"].split(".")
    with pytest.raises(IdTokenError):
        google.verify_id_token(f"{header}.{payload}.{signature[:-4]}AAAA")
    # alg=none with the same claims is refused.
    with pytest.raises(IdTokenError):
        google.verify_id_token("eyJhbGciOiJub25lIn0." + payload + ".")
    # A rotated key is found by refetching the JWKS once.
    emulator.rotate_keys()
    fresh = emulator.grant("alice@acme.test", CLIENT_ID, ["openid", "email"])
    assert google.verify_id_token(fresh["id_token"])["sub"] == claims["sub"]


def test_id_token_for_another_audience_is_refused(google: Google, emulator) -> None:  # type: ignore[no-untyped-def]
    emulator.add_client("other-client", "s", ["http://127.0.0.1/cb"])
    emulator.add_account("bob@acme.test", hd="acme.test")
    other = emulator.grant("bob@acme.test", "other-client", ["openid", "email"])
    with pytest.raises(IdTokenError, match="audience"):
        google.verify_id_token(other["id_token"])


def _signed_like(emulator: EmulatorControls, id_token: str, **changes: Any) -> str:
    """Re-sign a real id_token's claims, changed, with the emulator's current key."""
    payload = id_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del claims[name]
    service = next(e for e in emulator.app.extensions.values() if isinstance(e, Emulator))
    return str(service.keys.sign(claims))


@pytest.mark.parametrize("value", [1, "true", "True", [True], {"v": True}, None, False])
def test_email_verified_must_be_json_true(
    google: Google, grant: dict[str, Any], emulator: EmulatorControls, value: Any
) -> None:
    assert google.verify_id_token(_signed_like(emulator, grant["id_token"]))["email_verified"] \
        is True
    forged = _signed_like(emulator, grant["id_token"], email_verified=value)
    with pytest.raises(IdTokenError, match="not verified"):
        google.verify_id_token(forged)


def test_several_audiences_need_azp_to_be_this_client(
    google: Google, grant: dict[str, Any], emulator: EmulatorControls
) -> None:
    audiences = [CLIENT_ID, "other-client.apps.googleusercontent.com"]
    good = _signed_like(emulator, grant["id_token"], aud=audiences, azp=CLIENT_ID)
    assert google.verify_id_token(good)["aud"] == audiences
    for azp in (None, "other-client.apps.googleusercontent.com", "", [CLIENT_ID]):
        forged = _signed_like(emulator, grant["id_token"], aud=audiences, azp=azp)
        with pytest.raises(IdTokenError, match="azp"):
            google.verify_id_token(forged)
    # One audience, as Google sends for a web client: azp is not required.
    assert google.verify_id_token(_signed_like(emulator, grant["id_token"], azp=None))


def test_expired_id_token_is_refused(google: Google, grant: dict, emulator) -> None:  # type: ignore[no-untyped-def, type-arg]
    emulator.clock(-7200)
    old = emulator.grant("alice@acme.test", CLIENT_ID, ["openid", "email"])
    with pytest.raises(IdTokenError, match="expired"):
        google.verify_id_token(old["id_token"])


def test_response_issuer_is_compared_exactly(google: Google) -> None:
    google.check_response_issuer(None)
    google.check_response_issuer(google.issuer)
    with pytest.raises(IdTokenError):
        google.check_response_issuer(google.issuer + "/")


def test_authorize_url_carries_pkce_s256(google: Google) -> None:
    url = google.authorize_url(
        redirect_uri="http://127.0.0.1:8080/auth/callback", scopes=["openid", "email"],
        state="s" * 43, nonce="n" * 22, code_verifier="v" * 64, access_type="offline",
        include_granted_scopes=True, login_hint="alice@acme.test",
    )
    assert "code_challenge_method=S256" in url and "v" * 64 not in url
    assert "include_granted_scopes=true" in url and "access_type=offline" in url


def test_a_kid_miss_refetches_the_jwks_at_most_once_per_cooldown(emulator) -> None:  # type: ignore[no-untyped-def]
    now = [1_000_000.0]
    settings = load_settings({"GOOGLE_TIMEOUT": 2}, environ={})
    google = Google(settings, clock=lambda: now[0])
    url = emulator.url + "/oauth2/v3/certs"
    first = google.key_set(url)
    assert google.key_set(url) is first  # cached
    calls = emulator.calls()["certs"]
    google.key_set(url, refresh=True)  # the first miss refetches at once
    google.key_set(url, refresh=True)  # a second one within the cooldown does not
    assert emulator.calls()["certs"] == calls + 1
    now[0] += JWKS_REFETCH_COOLDOWN
    google.key_set(url, refresh=True)
    assert emulator.calls()["certs"] == calls + 2
    # Another URL has its own entry in the shared cache.
    assert google.key_set(emulator.url + "/oauth2/v3/certs?other") is not first


def test_token_calls_borrow_a_client_each_and_keep_it(
    google: Google, grant: dict, monkeypatch: pytest.MonkeyPatch,  # type: ignore[type-arg]
) -> None:
    # Two calls at once get a client each (no pool shared between callers), both kept after.
    with google._token_client() as first, google._token_client() as second:  # noqa: SLF001
        assert first is not second and first is not google.http
    assert google._idle == [second, first]  # noqa: SLF001 - last in, first out
    google.refresh(grant["refresh_token"])
    assert google._idle == [second, first]  # noqa: SLF001 - reused, none made
    # Past the number kept, a returned client is closed, not hoarded.
    monkeypatch.setattr(client_module, "TOKEN_CLIENTS_KEPT", 2)
    with google._token_client() as a, google._token_client() as b, \
            google._token_client() as extra:  # noqa: SLF001
        assert {id(a), id(b)} == {id(first), id(second)} and not extra.is_closed
    kept = google._idle  # noqa: SLF001
    assert len(kept) == 2 and [c for c in (a, b, extra) if c.is_closed] == [a]  # returned last
