"""Manage the event stream at Google: register the receiver, ask for a test event, status.

The service-account key file is read for one command and never stored; the calls carry a
short-lived assertion signed with it (Google's RISC management API takes such a JWT).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from broker import config
from broker.callouts import USER_AGENT, http_client
from broker.config import Settings
from broker.risc.actions import KNOWN, OAUTH_TYPES, RISC_TYPES

MANAGEMENT_AUDIENCE = (
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
)
PUSH = "https://schemas.openid.net/secevent/risc/delivery-method/push"
ASSERTION_LIFETIME = 3600
MAX_KEY_FILE = 64 * 1024


class StreamError(Exception):
    """A stream command that cannot be carried out; the text is one line for people."""


def event_uris() -> list[str]:
    """Return the type URIs the broker asks Google for (token events under OAuth's namespace)."""
    return [
        (OAUTH_TYPES if kind.startswith("token") else RISC_TYPES) + kind
        for kind in KNOWN if kind != "verification"
    ]


@dataclass(frozen=True)
class ServiceAccount:
    """A service account's email and signing key, held in memory for one command."""

    email: str
    key_id: str
    key: RSAKey = field(repr=False)


def load_service_account(path: str) -> ServiceAccount:
    """Read a Google service-account JSON key file; refuse anything else."""
    try:
        raw = Path(path).read_bytes()[: MAX_KEY_FILE + 1]
    except OSError as exc:
        raise StreamError(f"cannot read the key file: {exc.strerror or 'unreadable'}") from None
    if len(raw) > MAX_KEY_FILE:
        raise StreamError("the key file is larger than a service-account key")
    try:
        data = json.loads(raw)
        email, key_id, pem = data["client_email"], data["private_key_id"], data["private_key"]
        if not all(isinstance(v, str) and v for v in (email, key_id, pem)):
            raise ValueError("empty field")
        key = RSAKey.import_key(pem)
    except (ValueError, KeyError, TypeError, JoseError):
        raise StreamError(
            "the key file is not a service-account key (client_email, private_key_id, "
            "private_key)"
        ) from None
    if not key.is_private:
        raise StreamError("the key file holds no private key")
    return ServiceAccount(email, key_id, key)


def check_receiver(url: str) -> str:
    """Return a receiver URL: https, or http on loopback only (the emulator's tests)."""
    parts = urlsplit(url.strip())
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise StreamError("the receiver URL needs a host, and no credentials or fragment")
    if parts.scheme == "https":
        return url.strip()
    if parts.scheme == "http" and config.is_loopback_url(url):
        return url.strip()
    raise StreamError("the receiver URL must be https:// (http:// only on loopback)")


class Stream:
    """Call Google's RISC management API as one service account."""

    def __init__(self, settings: Settings, account: ServiceAccount,
                 http: httpx.Client | None = None) -> None:
        self.base = settings.RISC_API_URL.rstrip("/")
        self.account = account
        self.http = http or http_client(settings.CA_BUNDLE, httpx.Timeout(settings.GOOGLE_TIMEOUT),
                                        headers=USER_AGENT)

    def _assertion(self) -> str:
        now = int(time.time())  # Google's clock judges it: the real one, not the app's
        claims = {"iss": self.account.email, "sub": self.account.email,
                  "aud": MANAGEMENT_AUDIENCE, "iat": now, "exp": now + ASSERTION_LIFETIME}
        header = {"alg": "RS256", "kid": self.account.key_id, "typ": "JWT"}
        return jwt.encode(header, claims, self.account.key)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._assertion()}"}
        try:
            response = self.http.request(method, self.base + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise StreamError(f"Google's RISC API cannot be reached ({type(exc).__name__})") \
                from None
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            said = str(message or "")[:200].replace("\n", " ")
            raise StreamError(f"Google answered {response.status_code}" +
                              (f": {said}" if said else ""))
        return answer

    def register(self, receiver: str) -> dict[str, Any]:
        """Point the stream at `receiver` for every event type the broker acts on."""
        body = {"delivery": {"delivery_method": PUSH, "url": check_receiver(receiver)},
                "events_requested": event_uris()}
        self._call("POST", "/v1beta/stream:update", body)
        return body

    def verify(self, state: str) -> None:
        """Ask Google to send a `verification` event carrying `state`."""
        self._call("POST", "/v1beta/stream:verify", {"state": state})

    def status(self) -> dict[str, Any]:
        """Return the stream's configuration and whether it is enabled."""
        stream = self._call("GET", "/v1beta/stream")
        status = self._call("GET", "/v1beta/stream/status")
        return {"stream": stream, "status": status}
