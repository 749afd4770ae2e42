"""Reach the running emulator's services from a request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flask import Response, current_app, request
from flask.blueprints import BlueprintSetupState

from broker.emulator.faults import FaultBoard
from broker.emulator.keys import KeyRing
from broker.emulator.oauth import TokenService
from broker.emulator.state import AccessToken, Account, EmulatorState

if TYPE_CHECKING:
    from broker.emulator.gmailcalls import GmailDesk

EXTENSION = "google_emulator"


@dataclass
class Emulator:
    """The services one emulator app shares between its requests."""

    state: EmulatorState
    keys: KeyRing
    tokens: TokenService
    faults: FaultBoard
    gmail: GmailDesk


def only_in_emulator(setup: BlueprintSetupState) -> None:
    """Refuse to mount the emulator's views in any app but the emulator's own."""
    if EXTENSION not in setup.app.extensions:
        raise RuntimeError(
            "the Google emulator is its own app (broker.emulator.create_app); "
            "it cannot be mounted inside another one"
        )


def get_emulator() -> Emulator:
    """Return the current app's emulator."""
    return cast(Emulator, current_app.extensions[EXTENSION])


def bearer_token() -> AccessToken | None:
    """Return the live access token of the request's bearer header or `access_token` query."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    raw = raw.strip() if scheme.lower() == "bearer" else ""
    return get_emulator().tokens.active_access_token(raw or request.args.get("access_token"))


def account_of(token: AccessToken) -> Account | None:
    """Return the account a token belongs to."""
    state = get_emulator().state
    with state.lock:
        return state.accounts.get(token.sub)


def issuer() -> str:
    """Return the issuer: the configured one, else the base URL this request came to."""
    configured = current_app.config.get("EMULATOR_ISSUER")
    return str(configured).rstrip("/") if configured else request.url_root.rstrip("/")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return JSON in the given key order, pretty-printed like Google's answers."""
    return Response(
        json.dumps(body, indent=2) + "\n",
        status=status,
        mimetype="application/json",
        headers=headers or {},
    )
