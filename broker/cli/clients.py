"""`broker client …`, `broker webhook …` and `broker worker`."""

from __future__ import annotations

import json
import sys
import traceback
import uuid

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from broker import webhooks
from broker.cli.actor import actor
from broker.clock import get_clock
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.logging import redact
from broker.tenancy import clients, tenants


@click.group(cls=AppGroup)
def client() -> None:
    """Manage API clients of a tenant."""


def _print_issued(issued: clients.Issued, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"client_id": issued.client_id,
                               "client_secret": issued.client_secret}))
    else:
        click.echo(f"client_id:     {issued.client_id}")
        click.echo(f"client_secret: {issued.client_secret}")
        click.echo("The secret is shown once; store it now.", err=True)


@client.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True, help="repeatable")
@click.option("--ip-range", "ip_ranges", multiple=True, help="CIDR (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def client_create(
    slug: str, name: str, scopes: tuple[str, ...], ip_ranges: tuple[str, ...], as_json: bool
) -> None:
    """Create an API client; print its id and secret once."""
    with get_db().transaction() as session:
        issued = clients.create_client(
            session, tenants.get_tenant(session, slug), name=name, scopes=scopes,
            ip_ranges=ip_ranges, actor=actor(),
        )
    _print_issued(issued, as_json)


@client.command("rotate-secret")
@click.argument("client_id")
@click.option("--grace", default="24h", show_default=True, help="old secret keeps working")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def client_rotate(client_id: str, grace: str, as_json: bool) -> None:
    """Give a client a new secret; the old one works through the grace period."""
    delay = clients.parse_grace(grace)
    with get_db().transaction() as session:
        issued = clients.rotate_secret(
            session, client_id, grace=delay, now=get_clock()(), actor=actor()
        )
    _print_issued(issued, as_json)


@client.command("disable")
@click.argument("client_id")
def client_disable(client_id: str) -> None:
    """Disable a client."""
    with get_db().transaction() as session:
        clients.disable_client(session, client_id, actor=actor())
    click.echo(f"disabled {client_id}")


@client.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def client_list(slug: str, as_json: bool) -> None:
    """List a tenant's clients (never their secrets)."""
    with get_db().transaction(write=False) as session:
        rows = [
            {"client_id": c.id, "name": c.name, "status": c.status,
             "scopes": c.allowed_scopes, "ip_ranges": c.allowed_ip_ranges}
            for c in clients.list_clients(session, tenants.get_tenant(session, slug))
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['client_id']}\t{r['status']}\t{r['name']}\t{' '.join(r['scopes'])}")


@click.group(cls=AppGroup)
def webhook() -> None:
    """Manage webhook endpoints for connection events."""


@webhook.command("add")
@click.argument("url")
@click.option("--tenant", "slug", required=True)
@click.option("--event", "events", multiple=True, type=click.Choice(webhooks.EVENTS))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def webhook_add(url: str, slug: str, events: tuple[str, ...], as_json: bool) -> None:
    """Register an endpoint (every event unless --event is given); print its secret once."""
    with get_db().transaction() as session:
        added = webhooks.add(
            session, get_keys(), tenants.get_tenant(session, slug).id, url=url,
            events=list(events) or None,
            allow_private=current_app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE, actor=actor(),
        )
        hook_id = str(added.webhook.id)
    if as_json:
        click.echo(json.dumps({"id": hook_id, "secret": added.secret}))
    else:
        click.echo(f"webhook {hook_id}\nsigning secret: {added.secret}")


@webhook.command("list")
@click.option("--tenant", "slug", required=True)
def webhook_list(slug: str) -> None:
    """List a tenant's webhooks."""
    with get_db().transaction(write=False) as session:
        for hook in webhooks.list_webhooks(session, tenants.get_tenant(session, slug).id):
            click.echo(f"{hook.id}\t{hook.status}\t{hook.url}\t{','.join(hook.events) or '*'}")


@webhook.command("disable")
@click.argument("webhook_id")
def webhook_disable(webhook_id: str) -> None:
    """Stop deliveries to a webhook."""
    try:
        wanted = uuid.UUID(webhook_id)
    except ValueError:
        raise InvalidRequest(f"not a webhook id: {webhook_id[:60]!r}") from None
    with get_db().transaction() as session:
        webhooks.disable(session, wanted, actor=actor())
    click.echo(f"disabled {webhook_id}")


@click.command("worker")
@with_appcontext
@click.option("--once", is_flag=True, help="run every duty once and exit")
@click.option("--interval", default=15.0, show_default=True,
              help="seconds between passes (with --once: how often you run it, which pages use "
                   "to tell a stopped worker)")
def worker_command(once: bool, interval: float) -> None:
    """Run the background worker."""
    from broker import worker

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    get_keys(app)
    if once:
        done = worker.run_pass(app)
        worker.beat(app, interval)
        click.echo(json.dumps(done.report))
        debug = app.config["BROKER"].DEBUG
        for name, exc in done.failures.items():
            if debug:
                click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)
            hint = "" if debug else "; set BROKER_DEBUG=1 for details"
            click.echo(f"Error: worker duty {name} failed ({type(exc).__name__}){hint}", err=True)
        if done.failures:
            sys.exit(1)
        return
    worker.run(app, interval=interval)


COMMANDS = [client, webhook, worker_command]
