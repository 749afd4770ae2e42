"""Random secrets and the digest under which the broker stores them (client, session, state)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets


def new_secret() -> str:
    """Return a fresh random value of 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """Return the SHA-256 hex digest under which a secret value is stored.

    Every value digested here is a high-entropy random secret, so no slow hash is needed.
    """
    return hashlib.sha256(value.encode()).hexdigest()


# Google names a refresh token in a RISC `token-revoked` event by `token_identifier_alg`:
# `prefix` (its first 16 characters) or `hash_base64_sha512_sha512` (a double SHA-512, base64).
# Google does not say whether the inner digest is raw or hex, nor which base64 alphabet it
# uses, so both inner forms are kept and either alphabet, padded or not, is read (`token_id`).
PREFIX_LENGTH = 16
REFRESH_TOKEN_ID_COLUMNS = (
    "refresh_token_prefix_id", "refresh_token_hash_id", "refresh_token_hexhash_id",
)


def _id_of(kind: str, value: bytes) -> str:
    # A digest of what Google sends, never the prefix itself: 16 characters of a refresh
    # token are part of a secret and stay out of the database in clear.
    return hashlib.sha256(kind.encode() + b"|" + value).hexdigest()


def refresh_token_ids(refresh_token: str | None) -> dict[str, str | None]:
    """Return the connection columns that let a `token-revoked` event find this token."""
    if not refresh_token:
        return dict.fromkeys(REFRESH_TOKEN_ID_COLUMNS)
    raw = refresh_token.encode()
    inner = hashlib.sha512(raw)
    return {
        "refresh_token_prefix_id": _id_of("prefix", raw[:PREFIX_LENGTH]),
        "refresh_token_hash_id": _id_of("sha512", hashlib.sha512(inner.digest()).digest()),
        "refresh_token_hexhash_id": _id_of(
            "sha512", hashlib.sha512(inner.hexdigest().encode()).digest()
        ),
    }


def token_id(alg: str, token: str) -> str | None:
    """Return the stored form of the identifier a `token-revoked` event carries, or None."""
    if alg == "prefix":
        return _id_of("prefix", token.encode()[:PREFIX_LENGTH]) if token else None
    if alg != "hash_base64_sha512_sha512" or not token.isascii():
        return None
    text = token.strip().rstrip("=")
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            value = decode(padded)
        except (ValueError, binascii.Error):
            continue
        if len(value) == hashlib.sha512().digest_size:
            return _id_of("sha512", value)
    return None
