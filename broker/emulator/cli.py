"""`broker emulator`: run the offline Google emulator."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from broker.emulator.server import base_url, build_server

BANNER = (
    "Google emulator for tests and offline demos: this is NOT Google.\n"
    "  issuer     {url}\n"
    "  discovery  {url}/.well-known/openid-configuration\n"
    "  controls   {url}/_emulator/ (loopback callers only)"
)
# Bound to these, the emulator is reached as `localhost`: the name the README and the demo
# give the broker, so the issuer it sees is the one printed.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}  # noqa: S104 - compared, not bound


def public_base(app_config: dict[str, Any], host: str, port: int, tls: bool = False) -> str:
    """Return the base URL to print: the configured issuer, else how this machine reaches it."""
    configured = app_config.get("EMULATOR_ISSUER")
    if configured:
        return str(configured).rstrip("/")
    return base_url("localhost" if host in LOCAL_HOSTS else host, port, tls)


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8081, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file: {"clients": [...], "accounts": [...]} applied at start.',
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file that keeps accounts, grants, keys and tokens across restarts.",
)
@click.option(
    "--tls", is_flag=True,
    help="Serve HTTPS with a throw-away PKI (root, intermediate, leaf for localhost and "
         "127.0.0.1) kept beside --state, else in a new temporary folder; prints the root to "
         "trust (BROKER_CA_BUNDLE).",
)
def emulator_command(
    host: str, port: int, config_file: Path | None, state_file: Path | None, tls: bool
) -> None:
    """Run an offline stand-in for Google's OAuth endpoints (not Google)."""
    from broker.emulator import create_app

    config: dict[str, Any] = {}
    if config_file is not None:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise click.BadParameter(f"cannot read {config_file}: {error}") from error
        if not isinstance(config, dict):
            raise click.BadParameter(f"{config_file} must hold a JSON object")
    try:
        app = create_app(config, state_file=str(state_file) if state_file else None)
    except (KeyError, TypeError, ValueError) as error:
        raise click.ClickException(f"invalid emulator configuration: {error}") from error
    context = None
    if tls:
        from broker.emulator.pki import make_pki

        folder = (state_file.parent if state_file else
                  Path(tempfile.mkdtemp(prefix="google-emulator-pki-")))
        pki = make_pki(folder)
        context = pki.server_context()
    server = build_server(app, host, port, context)
    click.echo(BANNER.format(url=public_base(dict(app.config), host, server.port, tls)))
    if tls:
        click.echo(f"  root CA    {pki.root} (trust it: BROKER_CA_BUNDLE={pki.root})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("Warning: its controls only answer loopback peers.", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("Emulator stopped.")
    finally:
        app.extensions["google_emulator"].faults.clear()
        server.server_close()
