"""The one JWKS cache and the JOSE checks every signed token we accept shares.

Google's keys (sign-in, RISC), workload issuers and private_key_jwt clients' `jwks_url` all go
through one `JwksCache`: a key set is kept for BROKER_JWKS_TTL (less when its answer's
Cache-Control says so), and a `kid` it lacks refetches it at most once per BROKER_JWKS_COOLDOWN,
so tokens with made-up `kid`s cannot turn into a stream of fetches from an issuer.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from flask import Flask, current_app
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.callouts import USER_AGENT, http_client
from broker.clock import get_clock
from broker.config import Settings

EXTENSION = "broker.jwks"
# The asymmetric algorithms a workload token or a client assertion may use; never HS*, never none.
ALGORITHMS = ("RS256", "ES256")
MAX_DOCUMENT = 256 * 1024
MAX_TOKEN = 8 * 1024
_MAX_AGE = re.compile(r"max-age=(\d+)")


class JwksUnavailable(Exception):
    """A key set or document cannot be had now (network, status, size or format)."""


class JoseRefused(Exception):
    """A token fails a JOSE check; the text names the check (for logs and audit, never users)."""


class JwksCache:
    """Key sets and discovery documents by URL, shared by every verifier of signed tokens."""

    def __init__(
        self, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.ttl = settings.JWKS_TTL
        self.cooldown = settings.JWKS_COOLDOWN
        self.clock = clock
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._pid = 0
        # Per URL: the keys, when they expire, and when a kid miss last forced a refetch.
        self._key_sets: dict[str, tuple[KeySet, float, float]] = {}
        self._documents: dict[str, tuple[dict[str, Any], float]] = {}

    @property
    def http(self) -> httpx.Client:
        """Return this process's client: TLS verified (broker.tls), no redirects, timeouts."""
        if self._http is None or self._pid != os.getpid():
            self._http = http_client(self.settings.CA_BUNDLE,
                                     httpx.Timeout(self.settings.GOOGLE_TIMEOUT),
                                     headers=USER_AGENT)
            self._pid = os.getpid()
        return self._http

    def _get(self, url: str) -> tuple[dict[str, Any], float]:
        """Fetch a JSON object of at most MAX_DOCUMENT bytes; return it and when it expires."""
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"status {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise JwksUnavailable("document too large")
                cache_control = response.headers.get("Cache-Control", "")
            document = json.loads(body)
        except (httpx.HTTPError, ValueError) as exc:
            raise JwksUnavailable(type(exc).__name__) from None
        if not isinstance(document, dict):
            raise JwksUnavailable("not a JSON object")
        match = _MAX_AGE.search(cache_control)
        ttl = min(int(match.group(1)), self.ttl) if match else self.ttl
        return document, self.clock() + ttl

    def key_set(self, url: str, *, refresh: bool = False) -> KeySet:
        """Return the JWK Set at `url`; `refresh` (a kid miss) refetches once per cooldown."""
        now = self.clock()
        with self._lock:
            cached = self._key_sets.get(url)
        if cached is not None:
            keys, expires, forced_at = cached
            if expires > now and (not refresh or now - forced_at < self.cooldown):
                return keys
        document, expires = self._get(url)
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise JwksUnavailable("not a JWK Set") from None
        with self._lock:
            self._key_sets[url] = (keys, expires, now if refresh else float("-inf"))
        return keys

    def keys_for(self, url: str, kid: str) -> KeySet | None:
        """Return the keys at `url` with this `kid` (refetching once per cooldown), or None."""
        found = _with_kid(self.key_set(url), kid)
        if found is None:
            found = _with_kid(self.key_set(url, refresh=True), kid)
        return found

    def document(self, url: str) -> dict[str, Any]:
        """Return a JSON document (an issuer's discovery document), cached like the keys."""
        now = self.clock()
        with self._lock:
            cached = self._documents.get(url)
        if cached is not None and cached[1] > now:
            return cached[0]
        document, expires = self._get(url)
        with self._lock:
            self._documents[url] = (document, expires)
        return document

    def forget(self) -> None:
        """Drop every cached key set and document."""
        with self._lock:
            self._key_sets.clear()
            self._documents.clear()


def _with_kid(keys: KeySet, kid: str) -> KeySet | None:
    found = [key for key in keys.keys if key.kid == kid]
    return KeySet(found) if found else None


def key_set_of(document: Any) -> KeySet:
    """Return a JWK Set from its JSON form (a pinned set), or raise ValueError."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set ({\"keys\": [...]})")
    try:
        keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError("not a JWK Set") from None
    if not keys.keys or any(key.is_private for key in keys.keys):
        raise ValueError("a JWK Set of public keys is needed")
    return keys


def header_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a compact JWT's header and claims, UNVERIFIED; raise JoseRefused if malformed.

    The header must name an allowed algorithm and a `kid`: the checks that come before any key
    is looked up, so `alg: none` or HS256 never reach a verifier.
    """
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN:
        raise JoseRefused("not a compact JWT of at most 8 KiB")
    try:
        extracted = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(extracted.payload)
    except (JoseError, ValueError, UnicodeError):
        raise JoseRefused("not a compact JWT") from None
    header = dict(extracted.protected)
    if header.get("alg") not in ALGORITHMS:
        raise JoseRefused(f"algorithm not allowed ({str(header.get('alg'))[:10]})")
    if not isinstance(claims, dict):
        raise JoseRefused("the payload is not a JSON object")
    return header, claims


def verify_signature(token: str, keys: KeySet) -> dict[str, Any]:
    """Return the claims once the signature verifies with one of `keys`; else JoseRefused."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError):
        raise JoseRefused("the signature does not verify") from None
    return dict(decoded.claims)


def get_jwks(app: Flask | None = None) -> JwksCache:
    """Return the app's JWKS cache."""
    app = app or current_app
    cache: JwksCache = app.extensions[EXTENSION]
    return cache


def init_app(app: Flask) -> None:
    """Attach the one JWKS cache; it asks the app's clock, as tests move it."""
    app.extensions[EXTENSION] = JwksCache(
        app.config["BROKER"], clock=lambda: get_clock(app)().timestamp()
    )
