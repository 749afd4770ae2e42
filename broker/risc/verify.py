"""Verify a security event token (RFC 8417) as Google's Cross-Account Protection sends it."""

from __future__ import annotations

import datetime as dt
import hmac
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker import config
from broker.config import Settings
from broker.google import Google, GoogleError

MAX_BODY = 64 * 1024
ALGORITHM = "RS256"


class Refused(Exception):
    """A SET that does not verify: answered 400 with RFC 8935's `err` and a description."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


class Unavailable(Exception):
    """The configuration or the keys cannot be had now: answered 503 so Google retries."""


@dataclass(frozen=True)
class SecurityEventToken:
    """The verified claims of one SET."""

    jti: str
    iss: str
    iat: dt.datetime
    events: dict[str, dict[str, Any]] = field(repr=False)


def _configuration(google: Google, settings: Settings) -> tuple[str, str]:
    """Return the RISC configuration's issuer and jwks_uri."""
    try:
        document = google.document(settings.RISC_CONFIG_URL)
    except GoogleError:
        raise Unavailable("the RISC configuration cannot be read") from None
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str):
        raise Unavailable("the RISC configuration has no issuer or jwks_uri")
    scheme = urlsplit(jwks_uri).scheme
    local = config.is_loopback_url(settings.RISC_CONFIG_URL) and config.is_loopback_url(jwks_uri)
    if scheme != "https" and not (scheme == "http" and local):
        raise Unavailable("the RISC configuration's jwks_uri is not https")
    return issuer, jwks_uri


def _key(google: Google, jwks_uri: str, kid: str) -> KeySet:
    try:
        keys = google.key_set(jwks_uri)
        if not any(key.kid == kid for key in keys.keys):
            keys = google.key_set(jwks_uri, refresh=True)
    except GoogleError:
        raise Unavailable("Google's signing keys cannot be read") from None
    found = [key for key in keys.keys if key.kid == kid]
    if not found:
        raise Refused("invalid_key", "the signing key is not among Google's published keys")
    return KeySet(found)


def verify(google: Google, settings: Settings, body: bytes) -> SecurityEventToken:
    """Return a SET's claims once signature, issuer, audience and required claims check out.

    Events carry no `exp` and none is checked: Google redelivers old events on purpose.
    """
    if not body or len(body) > MAX_BODY:
        raise Refused("invalid_request", "the body must be one compact JWS of at most 64 KiB")
    try:
        text = body.decode("ascii").strip()
        header = jws.extract_compact(text.encode()).protected
    except (UnicodeDecodeError, JoseError, ValueError):
        raise Refused("invalid_request", "the body is not a compact JWS") from None
    if header.get("alg") != ALGORITHM:
        raise Refused("invalid_key", "only RS256 signatures are accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Refused("invalid_key", "the SET names no signing key (kid)")
    issuer, jwks_uri = _configuration(google, settings)
    keys = _key(google, jwks_uri, kid)
    try:
        signed = jws.deserialize_compact(text, keys, algorithms=[ALGORITHM])
        claims = json.loads(signed.payload)
    except (JoseError, ValueError):
        raise Refused("invalid_key", "the signature does not verify") from None
    if not isinstance(claims, dict):
        raise Refused("invalid_request", "the SET's payload is not a JSON object")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not hmac.compare_digest(iss.encode(), issuer.encode()):
        raise Refused("invalid_issuer", "the issuer is not the RISC configuration's")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    accepted = settings.risc_audiences
    if not any(isinstance(a, str) and a in accepted for a in audiences):
        raise Refused("invalid_audience", "the audience is none of this broker's")
    return _claims(claims, iss)


def _claims(claims: dict[str, Any], iss: str) -> SecurityEventToken:
    iat, jti, events = claims.get("iat"), claims.get("jti"), claims.get("events")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise Refused("invalid_request", "the SET has no iat")
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise Refused("invalid_request", "the SET has no jti (or one over 255 characters)")
    if not isinstance(events, dict) or not events or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in events.items()
    ):
        raise Refused("invalid_request", "the SET has no events object")
    try:
        issued = dt.datetime.fromtimestamp(iat, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise Refused("invalid_request", "the SET's iat is not a time") from None
    return SecurityEventToken(jti, iss, issued, events)
