"""Google by its configured endpoints: a thin wrapper that keeps the raw answer (DESIGN §8)."""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask, current_app
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker import config, scopes
from broker.callouts import USER_AGENT, http_client
from broker.config import Settings
from broker.jwks import JwksCache, JwksUnavailable, get_jwks

ID_TOKEN_LEEWAY = 300  # Google: allow a few minutes of clock skew
# An unknown `kid` refetches a JWK Set at once, but only once per BROKER_JWKS_COOLDOWN (this is
# its default): a stream of tokens with made-up kids must not turn into a stream of fetches.
JWKS_REFETCH_COOLDOWN = 30.0
TRANSIENT_ERRORS = {"server_error", "temporarily_unavailable", "internal_failure"}
MISCONFIGURED_ERRORS = {"invalid_client", "unauthorized_client"}
_MAX_AGE = re.compile(r"max-age=(\d+)")


class NotConfigured(Exception):
    """Google sign-in is not configured (no client id and secret)."""


class IdTokenError(Exception):
    """An id_token or authorization response fails verification; the text names the check."""

    def __init__(self, message: str, reason: str = "id_token_invalid") -> None:
        super().__init__(message)
        self.reason = reason


class Failure(StrEnum):
    """What kind of failure a call to Google was; the values are metric labels and audit reasons."""

    TRANSIENT = "transient"  # worth retrying: 5xx, 429, network, timeouts
    INVALID_GRANT = "invalid_grant"  # the refresh token or code is dead
    INVALID_SCOPE = "invalid_scope"  # the grant lacks a scope asked for
    MISCONFIGURED = "misconfigured"  # Google rejects the broker's own OAuth client
    INVALID_REQUEST = "invalid_request"  # anything else Google refused


# Every connection a process may open to Google is kept for reuse (httpx keeps 20 of its 100
# by default): the worker keeps 48 refreshes in flight, and each call past the 20th paid a
# new TCP and TLS connection (issue 18). Idle ones still close after httpx's 5 seconds.
GOOGLE_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
# Token calls borrow a client of one connection each, not the shared one: for every request
# httpcore walks each connection its pool holds, under one lock, so 48 refreshes sharing a
# pool of 48 connections cost 0.3 ms more CPU a call (a fifth) than each on a client of its own
# (issue 18). Borrowed last-in first-out, so the busiest keep their connection warm.
TOKEN_LIMITS = httpx.Limits(max_connections=1, max_keepalive_connections=1)
TOKEN_CLIENTS_KEPT = 100


class GoogleError(Exception):
    """A failed call to Google, classified on `error` and `error_subtype`, never description."""

    def __init__(
        self, kind: Failure, *, error: str = "", error_subtype: str = "", status: int = 0,
        retry_after: float | None = None, cause: str = "",
    ) -> None:
        super().__init__(f"google {kind}: {error or 'no error code'} (status {status})")
        self.cause = cause  # what failed on our side of a "network" error (a class name)
        self.kind = kind
        self.error = error
        self.error_subtype = error_subtype
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenResponse:
    """A successful token endpoint answer."""

    access_token: str
    expires_in: int
    refresh_token: str | None
    scopes: list[str]
    id_token: str | None
    raw: dict[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        return f"TokenResponse(scopes={self.scopes}, expires_in={self.expires_in})"


def classify(status: int, body: dict[str, Any]) -> Failure:
    """Return the failure kind of a token endpoint answer (`body` is {} when not a JSON object)."""
    if not body:
        # No OAuth error object at all: a proxy, a captive portal or a cut connection spoke.
        return Failure.TRANSIENT
    error = str(body.get("error") or "")
    if status >= 500 or status == 429 or error in TRANSIENT_ERRORS:
        return Failure.TRANSIENT
    if error in MISCONFIGURED_ERRORS:
        return Failure.MISCONFIGURED
    if error == "invalid_grant":
        return Failure.INVALID_GRANT
    if error == "invalid_scope":
        return Failure.INVALID_SCOPE
    return Failure.INVALID_REQUEST


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


class Google:
    """Talk to Google (or the emulator) by the endpoints its discovery document names."""

    def __init__(
        self, settings: Settings, *, clock: Callable[[], float] = time.time,
        jwks: JwksCache | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = settings.GOOGLE_CLIENT_ID or ""
        self._client_secret = settings.GOOGLE_CLIENT_SECRET or ""
        # Epoch seconds as Google counts them: id_token times and Cache-Control ages are
        # Google's, so the real clock by default, not the app's (which tests move).
        self.clock = clock
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._idle: list[httpx.Client] = []  # token call clients not lent now
        self._pid = 0
        self._discovery: tuple[dict[str, Any], float] | None = None
        # The app's one JWKS cache, shared with workload issuers and private_key_jwt clients.
        self.jwks = jwks or JwksCache(settings, clock=clock)
        self._documents: dict[str, tuple[dict[str, Any], float]] = {}

    def _client(self, limits: httpx.Limits) -> httpx.Client:
        return http_client(self.settings.CA_BUNDLE, httpx.Timeout(self.settings.GOOGLE_TIMEOUT),
                           headers=USER_AGENT, limits=limits)

    def _forget_parents(self) -> None:
        """Drop the clients a forked child inherited: its parent's sockets are not its own."""
        if self._pid != os.getpid():
            with self._lock:
                self._http, self._idle, self._pid = None, [], os.getpid()

    @property
    def http(self) -> httpx.Client:
        """Return this process's HTTP client: TLS verified (broker.tls), no redirects, timeouts."""
        self._forget_parents()
        if self._http is None:
            self._http = self._client(GOOGLE_LIMITS)
        return self._http

    @contextmanager
    def _token_client(self) -> Iterator[httpx.Client]:
        """Lend a client of one connection to one token call (see TOKEN_LIMITS)."""
        self._forget_parents()
        with self._lock:
            client = self._idle.pop() if self._idle else None
        client = client or self._client(TOKEN_LIMITS)
        try:
            yield client
        finally:
            with self._lock:
                kept = len(self._idle) < TOKEN_CLIENTS_KEPT
                if kept:
                    self._idle.append(client)
            if not kept:
                client.close()

    def _get_cached_json(self, url: str) -> tuple[dict[str, Any], float]:
        response = self.http.get(url)
        response.raise_for_status()
        match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
        ttl = min(int(match.group(1)), 86400) if match else 3600
        return response.json(), self.clock() + ttl

    def discovery(self) -> dict[str, Any]:
        """Return the discovery document, cached per its Cache-Control."""
        cached = self._discovery
        if cached and cached[1] > self.clock():
            return cached[0]
        try:
            document, expires = self._get_cached_json(self.settings.GOOGLE_DISCOVERY_URL)
        except (httpx.HTTPError, ValueError):
            raise GoogleError(Failure.TRANSIENT, error="discovery_unavailable") from None
        loopback = config.is_loopback_url(self.settings.GOOGLE_DISCOVERY_URL)
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            url = str(document.get(key) or "")
            scheme = urlsplit(url).scheme
            if scheme != "https" and not (scheme == "http" and loopback and
                                          config.is_loopback_url(url)):
                raise GoogleError(Failure.MISCONFIGURED, error=f"discovery_{key}_not_https")
        self._discovery = (document, expires)
        return document

    @property
    def issuer(self) -> str:
        """Return the discovery document's issuer."""
        return str(self.discovery().get("issuer", ""))

    def issuers(self) -> tuple[str, ...]:
        """Return the accepted id_token issuers."""
        return config.issuers(self.settings, self.issuer)

    def endpoint(self, name: str) -> str:
        """Return an endpoint URL from discovery (revocation has a documented fallback)."""
        document = self.discovery()
        if name == "revocation_endpoint" and name not in document:
            return "https://oauth2.googleapis.com/revoke"
        return str(document[name])

    def authorize_url(
        self, *, redirect_uri: str, scopes: list[str], state: str, nonce: str,
        code_verifier: str, access_type: str | None = None, prompt: str | None = None,
        include_granted_scopes: bool = False, login_hint: str | None = None,
    ) -> str:
        """Build the authorization URL with PKCE S256."""
        params = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(code_verifier),
            "code_challenge_method": "S256",
        }
        if access_type:
            params["access_type"] = access_type
        if prompt:
            params["prompt"] = prompt
        if include_granted_scopes:
            params["include_granted_scopes"] = "true"
        if login_hint:
            params["login_hint"] = login_hint
        return self.endpoint("authorization_endpoint") + "?" + urlencode(params)

    def _token_call(self, form: dict[str, str], timeout: float | None) -> TokenResponse:
        form = {**form, "client_id": self.client_id, "client_secret": self._client_secret}
        try:
            with self._token_client() as client:
                response = client.post(
                    self.endpoint("token_endpoint"), data=form,
                    timeout=httpx.Timeout(timeout) if timeout else httpx.USE_CLIENT_DEFAULT,
                )
        except httpx.HTTPError as exc:
            raise GoogleError(Failure.TRANSIENT, error="network",
                              cause=type(exc).__name__) from None
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            raise GoogleError(
                classify(response.status_code, body), error=str(body.get("error") or ""),
                error_subtype=str(body.get("error_subtype") or ""),
                status=response.status_code, retry_after=_retry_after(response),
            )
        return TokenResponse(
            access_token=str(body["access_token"]),
            expires_in=int(body.get("expires_in") or 0),
            refresh_token=body.get("refresh_token") or None,
            scopes=scopes.parse_google(body.get("scope")),
            id_token=body.get("id_token") or None,
            raw=body,
        )

    def exchange_code(self, code: str, *, code_verifier: str, redirect_uri: str) -> TokenResponse:
        """Exchange an authorization code (with its PKCE verifier) for tokens."""
        return self._token_call(
            {"grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
             "redirect_uri": redirect_uri},
            None,
        )

    def refresh(
        self, refresh_token: str, scopes: list[str] | None = None, timeout: float | None = None
    ) -> TokenResponse:
        """Refresh an access token, narrowed to `scopes` when given."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scopes:
            form["scope"] = " ".join(scopes)
        return self._token_call(form, timeout)

    def revoke(self, token: str, timeout: float | None = None) -> None:
        """Revoke a grant; an unknown or already revoked token counts as done."""
        try:
            response = self.http.post(
                self.endpoint("revocation_endpoint"), data={"token": token},
                timeout=httpx.Timeout(timeout) if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError:
            raise GoogleError(Failure.TRANSIENT, error="network") from None
        if response.status_code == 200:
            return
        try:
            error = str(response.json().get("error") or "")
        except ValueError:
            error = ""
        if response.status_code == 400 and error in {"invalid_token", "invalid_request"}:
            return
        raise GoogleError(
            Failure.TRANSIENT if response.status_code >= 500 or response.status_code == 429
            else Failure.INVALID_REQUEST, error=error, status=response.status_code,
        )

    def key_set(self, url: str, *, refresh: bool = False) -> KeySet:
        """Return the JWK Set at `url` from the shared JWKS cache (`broker.jwks`).

        `refresh` asks again after a `kid` was not found, at most once per
        BROKER_JWKS_COOLDOWN; raise GoogleError when the keys cannot be had.
        """
        try:
            return self.jwks.key_set(url, refresh=refresh)
        except JwksUnavailable:
            raise GoogleError(Failure.TRANSIENT, error="jwks_unavailable") from None

    def _key_set(self, refresh: bool = False) -> KeySet:
        try:
            return self.key_set(self.endpoint("jwks_uri"), refresh=refresh)
        except GoogleError:
            raise IdTokenError("signing keys unavailable") from None

    def document(self, url: str) -> dict[str, Any]:
        """Return a JSON document Google publishes (RISC configuration), cached per its age."""
        now = self.clock()
        with self._lock:
            cached = self._documents.get(url)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            document, expires = self._get_cached_json(url)
        except (httpx.HTTPError, ValueError):
            raise GoogleError(Failure.TRANSIENT, error="document_unavailable") from None
        if not isinstance(document, dict):
            raise GoogleError(Failure.TRANSIENT, error="document_unavailable")
        with self._lock:
            self._documents[url] = (document, expires)
        return document

    def verify_id_token(self, id_token: str, *, nonce: str | None = None) -> dict[str, Any]:
        """Verify signature (RS256 only), issuer, audience, times, nonce and email_verified."""
        try:
            try:
                token = jwt.decode(id_token, self._key_set(), algorithms=["RS256"])
            except JoseError as exc:
                if "kid" not in str(exc).lower() and "key" not in type(exc).__name__.lower():
                    raise
                token = jwt.decode(id_token, self._key_set(refresh=True), algorithms=["RS256"])
        except (JoseError, ValueError):
            raise IdTokenError("id_token signature or format is invalid") from None
        claims = dict(token.claims)
        now = self.clock()
        if claims.get("iss") not in self.issuers():
            raise IdTokenError("id_token issuer is not accepted")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.client_id not in audiences:
            raise IdTokenError("id_token audience is not this client")
        if len(audiences) > 1 and not (
            isinstance(claims.get("azp"), str) and claims["azp"] == self.client_id
        ):
            # OIDC Core 3.1.3.7: with several audiences, azp names the party it was issued to.
            raise IdTokenError("id_token has several audiences and its azp is not this client")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - ID_TOKEN_LEEWAY:
            raise IdTokenError("id_token has expired")
        if not isinstance(claims.get("iat"), int | float) or claims["iat"] > now + ID_TOKEN_LEEWAY:
            raise IdTokenError("id_token was issued in the future")
        if nonce is not None and not hmac.compare_digest(
            str(claims.get("nonce", "")).encode(), nonce.encode()
        ):
            raise IdTokenError("id_token nonce does not match")
        if not claims.get("sub"):
            raise IdTokenError("id_token has no subject")
        # Only JSON true: `1 in (True, ...)` holds in Python, and Google sends a boolean.
        if claims.get("email_verified") is not True:
            raise IdTokenError("email address is not verified", "email_unverified")
        return claims

    def check_response_issuer(self, iss: str | None) -> None:
        """Compare the authorization response's `iss` (RFC 9207) exactly, when present."""
        if iss is not None and not hmac.compare_digest(iss.encode(), self.issuer.encode()):
            raise IdTokenError("authorization response issuer does not match", "issuer_mismatch")


def get_google(app: Flask | None = None) -> Google:
    """Return the app's Google client; raise NotConfigured without a client id and secret."""
    app = app or current_app
    settings: Settings = app.config["BROKER"]
    if not settings.google_configured:
        raise NotConfigured("Google sign-in is not configured")
    google = app.extensions.get("broker.google")
    if google is None:
        google = app.extensions["broker.google"] = Google(settings, jwks=get_jwks(app))
    return google
