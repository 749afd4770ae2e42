"""Python SDK for jobs: BrokerClient.token() and BrokerCredentials for google-api-python-client.

    client = BrokerClient("https://broker.example.com", CLIENT_ID, CLIENT_SECRET)
    gmail = build("gmail", "v1", credentials=BrokerCredentials(client, "alice@acme.com"))

Jobs without secrets: `BrokerClient(url, CLIENT_ID, private_key_file="job-key.pem")` signs a
short private_key_jwt assertion per call, and `BrokerClient.from_workload_token(url,
"/var/run/secrets/broker/token", "alice@acme.com")` exchanges the platform's token (RFC 8693).
"""

from __future__ import annotations

import datetime as dt
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a type name
PROXY_TOKEN_TYPE = "urn:broker:token-type:proxy"  # noqa: S105 - a type name
ASSERTION_LIFETIME = 60


class BrokerAPIError(Exception):
    """A refusal from the broker; subclasses name each `error` code."""

    error = "server_error"

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(f"{body.get('error', self.error)}: {body.get('error_description', '')}")
        self.status = status
        self.body = body
        self.description = str(body.get("error_description", ""))
        self.retry_after = retry_after


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _error_class(code: str) -> type[BrokerAPIError]:
    name = "".join(part.title() for part in code.split("_")) + "Error"
    return type(name, (BrokerAPIError,), {"error": code, "__doc__": f"The broker said {code}."})


class BrokerUnavailableError(BrokerAPIError):
    """The broker could not be reached or did not answer in time; retry later.

    `status` is 0 (no HTTP answer) and `__cause__` is the httpx error.
    """

    error = "broker_unavailable"

    def __init__(self, description: str) -> None:
        super().__init__(0, {"error": self.error, "error_description": description}, None)


class LoginRequiredError(BrokerAPIError):
    """The user must sign in to the broker again, at `login_url`."""

    error = "login_required"

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(status, body, retry_after)
        self.login_url = _text(body.get("login_url"))


class NotConnectedError(BrokerAPIError):
    """The user has not connected Gmail; send them to `connect_url`."""

    error = "not_connected"

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(status, body, retry_after)
        self.connect_url = _text(body.get("connect_url"))


class ReauthRequiredError(BrokerAPIError):
    """The user's grant is dead (`reason` says why); send them to `reauth_url`."""

    error = "reauth_required"

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(status, body, retry_after)
        self.reason = _text(body.get("reason"))
        self.reauth_url = _text(body.get("reauth_url"))


class ScopeNotGrantedError(BrokerAPIError):
    """The user has not granted these scopes; send them to `consent_url`."""

    error = "scope_not_granted"

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(status, body, retry_after)
        self.consent_url = _text(body.get("consent_url"))


InvalidClientError = _error_class("invalid_client")
IpNotAllowedError = _error_class("ip_not_allowed")
RateLimitedError = _error_class("rate_limited")
InvalidRequestError = _error_class("invalid_request")
ScopeNotAllowedError = _error_class("scope_not_allowed")
UnknownUserError = _error_class("unknown_user")
UserSuspendedError = _error_class("user_suspended")
UpstreamUnavailableError = _error_class("upstream_unavailable")
BrokerMisconfiguredError = _error_class("broker_misconfigured")
DatabaseUnavailableError = _error_class("database_unavailable")
KeyServiceUnavailableError = _error_class("key_service_unavailable")
MethodNotAllowedError = _error_class("method_not_allowed")
InvalidTokenError = _error_class("invalid_token")
UserMismatchError = _error_class("user_mismatch")
EgressRefusedError = _error_class("egress_refused")
BatchNotSupportedError = _error_class("batch_not_supported")
ERRORS: dict[str, type[BrokerAPIError]] = {
    cls.error: cls for cls in (
        InvalidClientError, IpNotAllowedError, RateLimitedError, InvalidRequestError,
        ScopeNotAllowedError, UnknownUserError, UserSuspendedError, LoginRequiredError,
        NotConnectedError, ReauthRequiredError, ScopeNotGrantedError,
        UpstreamUnavailableError, BrokerMisconfiguredError, DatabaseUnavailableError,
        KeyServiceUnavailableError, MethodNotAllowedError, InvalidTokenError,
        UserMismatchError, EgressRefusedError, BatchNotSupportedError,
    )
}


@dataclass(frozen=True)
class Token:
    """An access token from the broker."""

    access_token: str
    expires_at: dt.datetime
    expires_in: int
    scopes: list[str]
    user_id: str
    email: str

    def __repr__(self) -> str:
        return f"Token(email={self.email!r}, scopes={self.scopes}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class ProxyToken:
    """A proxy token: good only at the broker's /proxy/, for one user, for minutes."""

    proxy_token: str
    expires_at: dt.datetime
    proxy_url: str
    user_id: str
    email: str

    def __repr__(self) -> str:
        return f"ProxyToken(email={self.email!r}, expires_at={self.expires_at})"


def _signing_key(path: str | Path) -> tuple[RSAKey | ECKey, str]:
    """Load a PEM private key (RSA or EC P-256) and return it as a JWK with its algorithm."""
    private = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if isinstance(private, rsa.RSAPrivateKey):
        return RSAKey.import_key(private), "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        return ECKey.import_key(private), "ES256"
    raise ValueError("the private key must be RSA or EC P-256 (PEM)")


class BrokerClient:
    """Ask the broker for users' Gmail access tokens."""

    def __init__(
        self, base_url: str, client_id: str, client_secret: str | None = None, *,
        cert: tuple[str, str] | None = None, verify: str | bool = True,
        timeout: float = 15.0, http: httpx.Client | None = None,
        private_key_file: str | Path | None = None,
    ) -> None:
        """Authenticate with the client's secret, with `cert=(chain.pem, key.pem)` (RFC 8705),
        or with `private_key_file` (private_key_jwt, RFC 7523: the key never leaves the job).

        With a certificate, call the broker's mTLS listener (its `mtls_endpoint_aliases`);
        `verify` is a CA file for the broker's own certificate, or True for the system store.
        With a key, `base_url` must be the broker's public URL: assertions name the endpoint.
        """
        given = [x for x in (client_secret, cert, private_key_file) if x is not None]
        if len(given) != 1 and client_id:
            raise ValueError("give exactly one of client_secret, cert and private_key_file")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._auth = httpx.BasicAuth(client_id, client_secret) if client_secret else None
        self._key = _signing_key(private_key_file) if private_key_file is not None else None
        # from_workload_token: the projected token file, re-read on every exchange.
        self._token_file: Path | None = None
        self.user: str | None = None
        if http is None:
            trust: ssl.SSLContext | bool = verify is not False
            if cert is not None or isinstance(verify, str):
                trust = ssl.create_default_context(
                    cafile=verify if isinstance(verify, str) else None)
                if cert is not None:
                    trust.load_cert_chain(*cert)
            http = httpx.Client(timeout=timeout, follow_redirects=False, verify=trust)
        self.http = http

    @classmethod
    def from_workload_token(
        cls, base_url: str, token_file: str | Path, user: str, *, verify: str | bool = True,
        timeout: float = 15.0, http: httpx.Client | None = None,
    ) -> BrokerClient:
        """Return a client that exchanges the platform's token for `user`'s (RFC 8693).

        `token_file` is read anew on each exchange: Kubernetes rotates a projected token in
        place, and a GitHub Actions step can rewrite it.
        """
        client = cls(base_url, "", verify=verify, timeout=timeout, http=http)
        client._token_file = Path(token_file)
        client.user = user
        return client

    def client_assertion(self, path: str) -> str:
        """Return a fresh private_key_jwt assertion for the broker endpoint at `path`."""
        if self._key is None:
            raise ValueError("this client has no private key")
        key, alg = self._key
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.base_url + path,
                  "iat": now, "exp": now + ASSERTION_LIFETIME,
                  "jti": secrets.token_urlsafe(18)}
        return jwt.encode({"alg": alg, "kid": key.thumbprint(), "typ": "JWT"}, claims, key)

    def _post(self, path: str, **kwargs: Any) -> tuple[httpx.Response, dict[str, Any]]:
        try:
            response = self.http.post(self.base_url + path, **kwargs)
        except httpx.TransportError as exc:
            # Connection refused, DNS, TLS, timeouts: one class a job can retry on.
            raise BrokerUnavailableError(
                f"no answer from the broker at {self.base_url} ({type(exc).__name__})"
            ) from exc
        data = self._json(response)
        if response.status_code != 200:
            retry = response.headers.get("Retry-After", "")
            cls = ERRORS.get(str(data.get("error")), BrokerAPIError)
            raise cls(response.status_code, data, int(retry) if retry.isdigit() else None)
        return response, data

    def _exchange(self, user: str, scopes: list[str] | None, min_ttl: int) -> Token:
        if self._token_file is None:
            raise ValueError("this client was not made by from_workload_token")
        form = {"grant_type": EXCHANGE_GRANT, "subject_token_type": JWT_TOKEN_TYPE,
                "subject_token": self._token_file.read_text(encoding="ascii").strip(),
                "login_hint": user, "min_ttl": str(min_ttl)}
        if scopes is not None:
            form["scope"] = " ".join(scopes)
        _, data = self._post("/api/v1/oauth/token", data=form)
        expires_in = int(data["expires_in"])
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
        return Token(data["access_token"], expires_at, expires_in,
                     str(data.get("scope", "")).split(), "", user)

    def token(
        self, user: str | None = None, scopes: list[str] | None = None, min_ttl: int = 300,
        rejected_token: str | None = None,
    ) -> Token:
        """Return a token for `user`, or raise the BrokerAPIError subclass of the refusal.

        A client from `from_workload_token` asks for its own user when none is named (and
        cannot report a `rejected_token`: the exchange has no such parameter).
        """
        user = user or self.user
        if not user:
            raise ValueError("name the user")
        if self._token_file is not None:
            return self._exchange(user, scopes, min_ttl)
        body: dict[str, Any] = {"user": user, "min_ttl": min_ttl}
        if scopes is not None:
            body["scopes"] = scopes
        if rejected_token is not None:
            body["rejected_token"] = rejected_token
        data = self._post_json("/api/v1/token", body)
        expires_at = dt.datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
        return Token(data["access_token"], expires_at, int(data["expires_in"]),
                     list(data["scopes"]), data["user"]["id"], data["user"]["email"])

    def proxy_token(self, user: str | None = None, ttl: int | None = None) -> ProxyToken:
        """Return a proxy token for `user`: Gmail through the broker, no Google token."""
        user = user or self.user
        if not user:
            raise ValueError("name the user")
        if self._token_file is not None:
            form = {"grant_type": EXCHANGE_GRANT, "subject_token_type": JWT_TOKEN_TYPE,
                    "subject_token": self._token_file.read_text(encoding="ascii").strip(),
                    "login_hint": user, "requested_token_type": PROXY_TOKEN_TYPE}
            _, data = self._post("/api/v1/oauth/token", data=form)
            expires_in = int(data["expires_in"])
            return ProxyToken(data["access_token"],
                              dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in),
                              self.base_url + "/proxy/", "", user)
        body: dict[str, Any] = {"user": user}
        if ttl is not None:
            body["ttl"] = ttl
        data = self._post_json("/api/v1/proxy/token", body)
        expires_at = dt.datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
        return ProxyToken(data["proxy_token"], expires_at, data["proxy_url"],
                          data["user"]["id"], data["user"]["email"])

    def proxy_credentials(self, user: str | None = None) -> Any:
        """Return google-auth Credentials for Gmail through the broker, as `user`.

        Use with `build("gmail", "v1", credentials=creds,
        client_options={"api_endpoint": creds.proxy_url})` and `userId="me"`.
        """
        if _google_credentials is None:  # pragma: no cover - needs the sdk extra
            raise RuntimeError("proxy_credentials needs google-auth (pip install "
                               "gmail-token-broker[sdk])")
        who = user or self.user
        if not who:
            raise ValueError("name the user")
        return BrokerProxyCredentials(self, who)

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body as this client: a signed assertion, a secret or a certificate."""
        if self._key is not None:
            body["client_assertion_type"] = ASSERTION_TYPE
            body["client_assertion"] = self.client_assertion(path)
        elif self._auth is None:
            body["client_id"] = self.client_id  # RFC 8705: the certificate names no client
        _, data = self._post(
            path, json=body,
            auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
        )
        return data

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return {"error": "server_error", "error_description": f"HTTP {response.status_code}"}
        return data


try:
    from google.auth import credentials as _google_credentials
    from google.auth import exceptions as _google_exceptions
except ImportError:  # pragma: no cover - google-auth is optional for jobs that use only token()
    _google_credentials = None  # type: ignore[assignment]


if _google_credentials is not None:

    class BrokerCredentials(_google_credentials.Credentials):
        """google-auth Credentials whose refresh() asks the broker.

        A refresh while the current token has not expired means Google refused it (a Gmail
        401), so the token goes back as `rejected_token` and the broker refreshes once.
        """

        def __init__(
            self, client: BrokerClient, user: str, scopes: list[str] | None = None,
            min_ttl: int = 300,
        ) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.client = client
            self.user = user
            self.requested_scopes = scopes
            self.min_ttl = min_ttl

        def refresh(self, request: Any) -> None:
            """Fetch a token from the broker (google-auth calls this on expiry or a 401)."""
            rejected = self.token if self.token and not self.expired else None
            try:
                token = self.client.token(self.user, self.requested_scopes, self.min_ttl,
                                          rejected_token=rejected)
            except BrokerAPIError as exc:
                raise _google_exceptions.RefreshError(  # type: ignore[no-untyped-call]
                    str(exc), exc
                ) from exc
            self.token = token.access_token
            # google-auth compares expiry with a naive UTC now.
            self.expiry = token.expires_at.astimezone(dt.UTC).replace(tzinfo=None)

        def apply(self, headers: dict[str, str], token: str | None = None) -> None:
            """Add the bearer header."""
            headers["authorization"] = f"Bearer {token or self.token}"

    class BrokerProxyCredentials(_google_credentials.Credentials):
        """google-auth Credentials carrying a proxy token: Gmail through the broker.

        The job never holds a Google token; google-auth calls refresh() on expiry or a 401,
        which fetches a new proxy token.
        """

        def __init__(self, client: BrokerClient, user: str) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.client = client
            self.user = user
            self.proxy_url = client.base_url + "/proxy/"

        def refresh(self, request: Any) -> None:
            """Fetch a proxy token from the broker."""
            try:
                issued = self.client.proxy_token(self.user)
            except BrokerAPIError as exc:
                raise _google_exceptions.RefreshError(  # type: ignore[no-untyped-call]
                    str(exc), exc
                ) from exc
            self.token = issued.proxy_token
            self.proxy_url = issued.proxy_url
            # Renewed a minute early, so a call never leaves with a token about to lapse.
            self.expiry = (issued.expires_at - dt.timedelta(seconds=60)).astimezone(
                dt.UTC).replace(tzinfo=None)

        def apply(self, headers: dict[str, str], token: str | None = None) -> None:
            """Add the bearer header."""
            headers["authorization"] = f"Bearer {token or self.token}"
