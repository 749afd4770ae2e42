"""`broker risc register|verify|status`: the Cross-Account Protection stream at Google."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from broker import risc
from broker.cli.actor import actor

KEY_FILE = click.option(
    "--key-file", required=True, type=click.Path(dir_okay=False),
    help="the service account's JSON key (role riscconfigs.admin); read, never stored",
)


def _account(path: str) -> risc.ServiceAccount:
    try:
        return risc.load_service_account(path)
    except risc.StreamError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("risc", cls=AppGroup)
def risc_group() -> None:
    """Cross-Account Protection: Google's security events."""


@risc_group.command("register")
@KEY_FILE
@click.option("--url", help="the receiver (default: BROKER_PUBLIC_URL/risc/events)")
def register(key_file: str, url: str | None) -> None:
    """Point Google's event stream at this broker's receiver."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    account = _account(key_file)
    try:
        body = risc.register(app, account, url or risc.default_receiver(app), actor=actor())
    except risc.StreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"registered {body['delivery']['url']} for {len(body['events_requested'])} "
               "event types")
    if not app.config["BROKER"].RISC:
        click.echo("note: BROKER_RISC is off, so the receiver answers 404 until it is on",
                   err=True)


@risc_group.command("verify")
@KEY_FILE
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="seconds to wait for the event")
def verify(key_file: str, timeout: float) -> None:
    """Ask Google for a verification event and wait until the receiver records it."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    account = _account(key_file)
    try:
        risc.verify(app, account, timeout=timeout)
    except risc.StreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("verification event received")


@risc_group.command("status")
@KEY_FILE
def status(key_file: str) -> None:
    """Show the stream's configuration and status at Google."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    account = _account(key_file)
    try:
        answer = risc.status(app, account)
    except risc.StreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(answer, indent=2, sort_keys=True))


COMMANDS = [risc_group]
