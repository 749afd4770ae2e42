"""How a refresh token is found from Google's `token-revoked` identifier, in every form."""

from __future__ import annotations

import base64
import hashlib

import pytest

from broker.keys import REFRESH_TOKEN_ID_COLUMNS, refresh_token_ids, token_id

TOKEN = "1//0gExampleRefreshTokenThatIsLongEnough-abc_DEF"
ALG = "hash_base64_sha512_sha512"


def _double(inner: bytes) -> bytes:
    return hashlib.sha512(inner).digest()


RAW = _double(hashlib.sha512(TOKEN.encode()).digest())
HEX = _double(hashlib.sha512(TOKEN.encode()).hexdigest().encode())


@pytest.mark.parametrize("encoded", [
    base64.b64encode(RAW).decode(),
    base64.b64encode(RAW).decode().rstrip("="),
    base64.urlsafe_b64encode(RAW).decode(),
    base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    base64.b64encode(HEX).decode(),
    base64.urlsafe_b64encode(HEX).decode().rstrip("="),
])
def test_every_documented_hash_form_finds_the_token(encoded: str) -> None:
    stored = set(refresh_token_ids(TOKEN).values())
    assert token_id(ALG, encoded) in stored


def test_the_prefix_form_finds_the_token() -> None:
    ids = refresh_token_ids(TOKEN)
    assert token_id("prefix", TOKEN[:16]) == ids["refresh_token_prefix_id"]
    assert token_id("prefix", TOKEN[:15]) != ids["refresh_token_prefix_id"]


def test_nothing_stored_reveals_the_token_or_its_prefix() -> None:
    for value in refresh_token_ids(TOKEN).values():
        assert value is not None and TOKEN[:8] not in value and len(value) == 64


@pytest.mark.parametrize(("alg", "token"), [
    (ALG, "not base64!"), (ALG, base64.b64encode(b"short").decode()), (ALG, "é"),
    ("sha1", TOKEN), ("prefix", ""),
])
def test_unusable_identifiers_match_nothing(alg: str, token: str) -> None:
    assert token_id(alg, token) is None


def test_no_token_clears_every_column() -> None:
    assert refresh_token_ids(None) == dict.fromkeys(REFRESH_TOKEN_ID_COLUMNS)
    assert refresh_token_ids("other") != refresh_token_ids(TOKEN)
