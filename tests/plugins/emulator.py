"""Pytest fixtures that serve the Google emulator over real HTTP and steer its controls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from broker.emulator import create_app
from broker.emulator.pki import Pki
from broker.emulator.server import serve_in_thread


class EmulatorServer:
    """A running emulator: its base URLs and the Flask app behind them."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.localhost_url = url.replace("127.0.0.1", "localhost", 1)
        self.app = app


class EmulatorControls:
    """Steer a running emulator through its `/_emulator/` controls."""

    def __init__(self, server: EmulatorServer) -> None:
        self.url = server.url
        self.localhost_url = server.localhost_url
        self.app = server.app
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def control(self, method: str, path: str, json: Any = None, *, status: int | None = 200) -> Any:
        """Call a control (path relative to `/_emulator/`) and return its parsed JSON."""
        response = self.http.request(method, "/_emulator/" + path.lstrip("/"), json=json)
        if status is not None:
            assert response.status_code == status, (response.status_code, response.text)
        return response.json()

    def reset(self) -> Any:
        """Forget everything but clients and keys."""
        return self.control("POST", "reset")

    def calls(self) -> dict[str, Any]:
        """Return the call counters."""
        return dict(self.control("GET", "calls"))

    def add_account(self, email: str, **fields: Any) -> dict[str, Any]:
        """Create an account; return `{"sub", "email"}`."""
        return dict(self.control("POST", "accounts", {"email": email, **fields}))

    def accounts(self) -> list[dict[str, Any]]:
        """List the accounts."""
        return list(self.control("GET", "accounts")["accounts"])

    def add_client(
        self, client_id: str, client_secret: str, redirect_uris: list[str]
    ) -> dict[str, Any]:
        """Register an OAuth client."""
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": redirect_uris,
        }
        return dict(self.control("POST", "clients", body))

    def grant(self, email: str, client_id: str, scopes: list[str]) -> dict[str, Any]:
        """Mint a grant as if the user consented; return the token answer."""
        body = {"email": email, "client_id": client_id, "scopes": scopes}
        return dict(self.control("POST", "grants", body))

    def revoke_account(self, email: str) -> Any:
        """Have the user revoke every grant."""
        return self.control("POST", f"accounts/{email}/revoke")

    def change_password(self, email: str) -> Any:
        """Have the user change their password."""
        return self.control("POST", f"accounts/{email}/password")

    def require_reauth(self, email: str, required: bool = True) -> Any:
        """Make the account's refreshes fail with invalid_rapt (or stop that)."""
        return self.control("POST", f"accounts/{email}/reauth", {"required": required})

    def expire(self, email: str | None = None) -> Any:
        """Expire current access tokens (all, or one account's)."""
        return self.control("POST", "expire", {"email": email} if email else {})

    def settings(self, **changes: Any) -> dict[str, Any]:
        """Change settings; return those in force."""
        return dict(self.control("POST", "settings", changes))

    def fault(self, endpoint: str, **spec: Any) -> Any:
        """Make the next calls to an endpoint misbehave."""
        return self.control("POST", "faults", {"endpoint": endpoint, **spec})

    def clear_faults(self) -> Any:
        """Drop every fault and wake hanging calls."""
        return self.control("DELETE", "faults")

    def rotate_keys(self) -> dict[str, Any]:
        """Make a new signing key current."""
        return dict(self.control("POST", "keys/rotate"))

    def clock(self, offset: int) -> Any:
        """Set the clock offset from real time, in seconds."""
        return self.control("POST", "clock", {"offset_seconds": offset})

    def freeze(self, at: int | None = None) -> int:
        """Stop the emulator's clock (at `at`, else this second) so no second ticks mid-test."""
        frozen_at = int(time.time()) if at is None else at
        return int(self.control("POST", "clock", {"frozen_at": frozen_at})["now"])

    def unfreeze(self) -> Any:
        """Let the emulator's clock run with real time again."""
        return self.control("POST", "clock", {"frozen_at": None})

    def seed_mailbox(self, email: str, messages: int, **options: Any) -> dict[str, Any]:
        """Replace a mailbox with generated messages (`threads`, `attachment_bytes`, `seed`,
        `history_id`); return its figures and `messages` (ids, and `attachmentId` where one)."""
        body = {"messages": messages, **options}
        return dict(self.control("POST", f"accounts/{email}/mailbox", body))

    def gmail_requests(self) -> list[dict[str, Any]]:
        """Return the last 100 Gmail requests (method, raw path, query, header names, status)."""
        return list(self.control("GET", "gmail/requests")["requests"])

    def gmail_methods(self) -> dict[str, int]:
        """Return the Gmail calls counted per discovery method id."""
        return dict(self.calls()["gmail_methods"])

    def slow_gmail(self, latency_ms: int, count: int = -1) -> Any:
        """Delay the next `count` Gmail calls (all until cleared by default)."""
        return self.fault("gmail", latency_ms=latency_ms, count=count)
    def issuer_url(self, name: str) -> str:
        """Return a workload issuer's URL (its `iss`)."""
        return f"{self.url}/_emulator/issuers/{name}"

    def make_issuer(self, name: str, preset: str = "plain", **fields: Any) -> dict[str, Any]:
        """Create (or replace) a workload issuer; return its description."""
        body = {"name": name, "preset": preset, **fields}
        return dict(self.control("POST", "issuers", body, status=201))

    def issuer(self, name: str) -> dict[str, Any]:
        """Describe a workload issuer: its kids and JWKS and discovery fetch counts."""
        return dict(self.control("GET", f"issuers/{name}"))

    def mint(self, name: str, **claims: Any) -> str:
        """Mint a workload token: the preset's claims with these over them (None drops one)."""
        return str(self.control("POST", f"issuers/{name}/mint", claims)["token"])

    def rotate_issuer_key(self, name: str) -> str:
        """Make a new signing key current at a workload issuer; return its kid."""
        return str(self.control("POST", f"issuers/{name}/keys/rotate")["kid"])

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    """Serve one emulator per test session (per xdist worker), threaded, on a free port."""
    app = create_app(testing=True)
    url, stop = serve_in_thread(app, "127.0.0.1", 0)
    try:
        yield EmulatorServer(url, app)
    finally:
        stop()


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorControls]:
    """Reset the emulator, then hand the test its controls."""
    controls = EmulatorControls(emulator_server)
    controls.reset()
    try:
        yield controls
    finally:
        # A test that left a hang behind must not keep a server thread for two minutes.
        controls.clear_faults()
        controls.close()


ServeTls = Callable[[Pki], str]


@pytest.fixture
def emulator_tls() -> Iterator[tuple[ServeTls, list[str]]]:
    """Serve fresh emulators over TLS with a given PKI; yield the server and the paths it saw.

    `make_pki(folder)` gives the emulator's own root, intermediate and leaf; a test may build
    a broken one (expired leaf, wrong name, missing intermediate) with `broker.emulator.pki`.
    """
    stops: list[Callable[[], None]] = []
    seen: list[str] = []

    def serve(pki: Pki) -> str:
        app = create_app(testing=True)
        inner = app.wsgi_app

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            seen.append(environ["PATH_INFO"])
            return inner(environ, start_response)

        app.wsgi_app = counting  # type: ignore[method-assign]
        url, stop = serve_in_thread(app, "127.0.0.1", 0, pki.server_context())
        stops.append(stop)
        return url

    yield serve, seen
    for stop in stops:
        stop()
