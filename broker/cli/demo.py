"""`broker demo`: the emulator, the broker and its worker on loopback, with a tenant, accounts
and a client."""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from broker.cli.bootstrap import initialise, private_umask, write_secret_file
from broker.models import ApiClient, Tenant

TENANT = "demo"
DOMAIN = "demo.test"
ADMIN = "admin@demo.test"
MEMBER = "alice@demo.test"
GOOGLE_CLIENT_ID = "demo-broker.apps.googleusercontent.com"
# Short, so a webhook or a rotated key visibly moves within seconds of the click.
WORKER_INTERVAL = 5.0
SCOPES = [
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/gmail.send",
]


@dataclass
class DemoState:
    """What the demo keeps in `<instance>/demo.json` (0600) so a rerun reuses it."""

    google_client_secret: str
    api_client_id: str = ""
    api_client_secret: str = ""


def load_state(path: Path) -> DemoState:
    """Read demo.json, or make a new state with a fresh emulator client secret."""
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return DemoState(**{k: str(v) for k, v in raw.items() if k in DemoState.__annotations__})
    except (OSError, ValueError, TypeError):
        return DemoState(google_client_secret=secrets.token_urlsafe(24))


def save_state(path: Path, state: DemoState) -> None:
    """Write demo.json with mode 0600."""
    path.unlink(missing_ok=True)
    write_secret_file(path, json.dumps(state.__dict__, indent=2) + "\n")


def emulator_config(public_url: str, state: DemoState) -> dict[str, Any]:
    """Return the emulator seed: the broker's OAuth client and two Workspace accounts."""
    return {
        "clients": [{
            "client_id": GOOGLE_CLIENT_ID,
            "client_secret": state.google_client_secret,
            "redirect_uris": [public_url + "/auth/callback", public_url + "/connections/callback"],
        }],
        "accounts": [
            {"email": ADMIN, "name": "Ada Admin", "hd": DOMAIN},
            {"email": MEMBER, "name": "Alice Member", "hd": DOMAIN},
        ],
    }


def _ensure_rows(app: Any, state: DemoState) -> None:
    from broker.db import get_db
    from broker.keys import get_keys
    from broker.tenancy import clients, tenants

    with get_db(app).transaction() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == TENANT))
        if tenant is None:
            tenant = tenants.create_tenant(
                session, get_keys(app), slug=TENANT, name="Demo", domains=[DOMAIN],
                admin_email=ADMIN,
            )
        existing = session.get(ApiClient, state.api_client_id) if state.api_client_id else None
        if existing is None:
            issued = clients.create_client(session, tenant, name="demo job", scopes=SCOPES)
            state.api_client_id, state.api_client_secret = issued.client_id, issued.client_secret


def run(port: int, emulator_port: int) -> None:
    """Set everything up, print how to use it, and serve both apps until Ctrl-C."""
    # Everything the demo writes (keys, database, emulator state with live tokens) is private.
    with private_umask():
        _run(port, emulator_port)


def _run(port: int, emulator_port: int) -> None:
    from werkzeug.serving import make_server

    from broker import create_app
    from broker.config import load_settings
    from broker.emulator import create_app as create_emulator
    from broker.emulator.server import QuietQueryHandler, serve_in_thread

    settings = load_settings()
    public_url = os.environ.get("BROKER_PUBLIC_URL") or f"http://127.0.0.1:{port}"
    # The browser reaches the emulator as `localhost` and the broker as 127.0.0.1: two sites
    # with separate cookie jars, like Google and a real deployment.
    google_url = f"http://localhost:{emulator_port}"
    instance = settings.instance_dir
    instance.mkdir(parents=True, exist_ok=True)
    state_path = instance / "demo.json"
    state = load_state(state_path)

    emulator = create_emulator(
        emulator_config(public_url, state), state_file=str(instance / "emulator.json")
    )
    app = create_app(
        {
            "PUBLIC_URL": public_url,
            "GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID,
            "GOOGLE_CLIENT_SECRET": state.google_client_secret,
            "GOOGLE_DISCOVERY_URL": google_url + "/.well-known/openid-configuration",
            "GMAIL_API_URL": google_url,
        },
        require_keys=False,
    )
    with app.app_context():
        initialise(app)
    _ensure_rows(app, state)
    save_state(state_path, state)

    _, stop_emulator = serve_in_thread(emulator, "127.0.0.1", emulator_port)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietQueryHandler)
    stop_worker, worked = threading.Event(), threading.Event()
    worker_thread = threading.Thread(
        target=run_worker, args=(app, stop_worker, worked), name="demo-worker", daemon=True
    )
    worker_thread.start()
    # The banner comes after the first pass, so the first page never says "no worker".
    worked.wait(timeout=60)
    click.echo(banner(public_url, google_url, state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        click.echo("\nstopping the broker, the worker and the emulator")
    finally:
        stop_worker.set()
        server.shutdown()
        worker_thread.join(timeout=30)
        stop_emulator()


def run_worker(
    app: Any, stop: threading.Event, worked: threading.Event,
    interval: float = WORKER_INTERVAL,
) -> None:
    """Run the worker's passes until `stop` is set; set `worked` after the first one."""
    from broker import worker

    # At least one pass, even when stopped at once: a demo that ran has a heartbeat.
    while True:
        worker.run_once(app)
        worker.beat(app, interval)
        worked.set()
        if stop.wait(interval):
            return


def banner(public_url: str, google_url: str, state: DemoState) -> str:
    """Return what the demo prints: where to go, who to be, and a ready curl line."""
    body = json.dumps({"user": MEMBER, "scopes": ["gmail.readonly"]})
    return "\n".join([
        "Gmail token broker demo (offline: Google is the local emulator, not Google)",
        f"  open            {public_url}/",
        f"  sign in as      {MEMBER} (member) or {ADMIN} (tenant admin) on the emulator",
        f"  switch account  sign out of the broker, then of the emulator: {google_url}/Logout",
        "  then            Connect Gmail, and fetch a token as the demo job:",
        "",
        f"curl -s -u '{state.api_client_id}:{state.api_client_secret}' "
        f"-H 'Content-Type: application/json' -d '{body}' {public_url}/api/v1/token",
        "",
        "  or call Gmail through the broker, holding no Google token:",
        "",
        f"curl -s -u '{state.api_client_id}:{state.api_client_secret}' "
        f"{public_url}/proxy/gmail/v1/users/{MEMBER}/messages?maxResults=3",
        "",
        f"  worker          every {WORKER_INTERVAL:g} s: audit chain, webhooks, re-seal, refresh",
        f"  emulator        {google_url}/_emulator/calls (controls, counters)",
        "  stop            Ctrl-C",
    ])
