"""An offline stand-in for Google's OAuth 2.0, OpenID Connect and Gmail API endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from broker.emulator.context import EXTENSION, Emulator
from broker.emulator.faults import FaultBoard
from broker.emulator.gmailcalls import GmailDesk
from broker.emulator.keys import KeyRing
from broker.emulator.oauth import TokenService
from broker.emulator.state import Client, EmulatorState

__all__ = ["Emulator", "create_app"]


def _template_folder() -> str:
    """Return the checkout's top-level templates, else the copy the wheel carries."""
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "templates"
    return str(checkout if checkout.is_dir() else package / "templates")


def _seed(state: EmulatorState, config: Mapping[str, Any]) -> None:
    """Apply `clients`, `accounts` and `settings` from a --config mapping."""
    with state.lock:
        for raw in config.get("clients", []):
            client = Client(
                str(raw["client_id"]), str(raw["client_secret"]), list(raw.get("redirect_uris", []))
            )
            state.clients[client.client_id] = client
        for raw in config.get("accounts", []):
            fields = {k: v for k, v in raw.items() if k != "email"}
            state.add_account(str(raw["email"]), **fields)
        state.settings.update(config.get("settings", {}))
        state.save()


def create_app(
    config: Mapping[str, Any] | None = None,
    *,
    state_file: str | None = None,
    testing: bool = False,
) -> Flask:
    """Build the emulator app.

    `config` seeds the state with `clients`, `accounts` and `settings` (the --config file's
    shape); its upper-case keys go to Flask's config (e.g. `EMULATOR_ISSUER`). `state_file`
    loads and then keeps the state across restarts.
    """
    config = dict(config or {})
    state = EmulatorState(Path(state_file) if state_file else None)
    state.load()
    keys = KeyRing(state)
    keys.ensure()
    _seed(state, config)

    app = Flask("broker.emulator", template_folder=_template_folder(), static_folder=None)
    app.config.update(
        SECRET_KEY=state.session_secret,
        # Its own cookie, so that a broker on the same host never reads or clobbers it.
        SESSION_COOKIE_NAME="emulator_session",
        SESSION_COOKIE_SAMESITE="Lax",
        TESTING=testing,
    )
    app.config.update({k: v for k, v in config.items() if k.isupper()})
    app.extensions[EXTENSION] = Emulator(
        state=state,
        keys=keys,
        tokens=TokenService(state, keys),
        faults=FaultBoard(state.lock),
        gmail=GmailDesk(state.now),
    )

    from broker.emulator import authorize, controls, gmail, issuers, risc, routes

    app.register_blueprint(routes.bp)
    app.register_blueprint(gmail.bp)
    app.register_blueprint(risc.bp)
    app.register_blueprint(authorize.bp)
    app.register_blueprint(controls.bp)
    app.register_blueprint(issuers.bp)
    return app
