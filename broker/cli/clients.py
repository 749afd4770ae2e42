"""`broker client …`, `broker webhook …` and `broker worker`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from broker import webhooks
from broker.cli import options
from broker.cli.actor import actor
from broker.clock import get_clock
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.logging import redact
from broker.tenancy import clients, tenants

PEM_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group(cls=AppGroup)
def client() -> None:
    """Create, list, rotate and disable the API clients backend jobs authenticate as.

    A client belongs to one tenant, may ask only for its allowed scopes and, when given IP
    ranges, only from those addresses. Its secret is shown once, at creation or rotation.
    """


def _print_issued(issued: clients.Issued, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"client_id": issued.client_id,
                               "client_secret": issued.client_secret}))
    else:
        click.echo(f"client_id:     {issued.client_id}")
        click.echo(f"client_secret: {issued.client_secret}")
        click.echo("The secret is shown once; store it now.", err=True)


@client.command("create")
@options.tenant
@click.option("--name", required=True, help="a name unique in the tenant, e.g. nightly-export")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              help="a Gmail scope the client may ask for, short (gmail.readonly) or as a URL; "
                   "repeatable")
@click.option("--ip-range", "ip_ranges", multiple=True, metavar="CIDR",
              help="only calls from this range are served (default: any address the tenant's "
                   "policy allows); repeatable")
@click.option("--auth", "method", type=click.Choice(clients.METHODS),
              default="client_secret_basic", show_default=True,
              help="how the client proves itself: a secret, a certificate its tenant's CA "
                   "issued (RFC 8705 tls_client_auth), a pinned self-signed one, or an "
                   "assertion signed with its own key (RFC 7523 private_key_jwt)")
@click.option("--tls-ca", type=PEM_FILE,
              help="tls_client_auth: the CA (PEM) that issues the client's certificates, "
                   "pinned by its public key")
@click.option("--tls-subject", help="tls_client_auth: the leaf's exact subject DN, e.g. "
              "\"CN=nightly-export,O=Acme\"")
@click.option("--tls-san-dns", help="tls_client_auth: a DNS name the leaf's SAN carries")
@click.option("--tls-san-uri", help="tls_client_auth: a URI the leaf's SAN carries, e.g. "
              "spiffe://acme/job")
@click.option("--tls-san-ip", help="tls_client_auth: an IP address the leaf's SAN carries")
@click.option("--tls-san-email", help="tls_client_auth: an email the leaf's SAN carries")
@click.option("--tls-cert", "tls_certs", type=PEM_FILE, multiple=True,
              help="self_signed_tls_client_auth: the pinned certificate (PEM); give two "
                   "while replacing one")
@click.option("--public-key", type=PEM_FILE,
              help="private_key_jwt: the job's public key (PEM; RSA 2048+ or EC P-256)")
@click.option("--jwks-url", metavar="URL",
              help="private_key_jwt: or the https URL where the job publishes its JWK Set")
@click.option("--method", "methods", multiple=True, metavar="ID",
              help="a Gmail method the client may call through /proxy/, by discovery id "
                   "(gmail.users.messages.list); repeatable; default: every method its "
                   "scopes permit")
@options.as_json
def client_create(
    slug: str, name: str, scopes: tuple[str, ...], ip_ranges: tuple[str, ...], method: str,
    tls_ca: Path | None, tls_subject: str | None, tls_san_dns: str | None,
    tls_san_uri: str | None, tls_san_ip: str | None, tls_san_email: str | None,
    tls_certs: tuple[Path, ...], public_key: Path | None, jwks_url: str | None,
    methods: tuple[str, ...], as_json: bool,
) -> None:
    """Create an API client; print its id (and its secret, shown once).

    With --auth tls_client_auth, name exactly one of --tls-subject or --tls-san-*: the
    leaf itself must carry it (no CN fallback, no patterns). A certificate client gets no
    secret and names itself with client_id in the request body. With --auth private_key_jwt,
    give --public-key or --jwks-url: the job signs a short assertion with its private key,
    which the broker never sees.

    \b
    Examples:
      broker client create --tenant acme --name nightly-export --scope gmail.readonly
      broker client create --tenant acme --name mailer --scope gmail.send \\
        --auth tls_client_auth --tls-ca acme-ca.pem --tls-san-uri spiffe://acme/mailer
      broker client create --tenant acme --name keyed --scope gmail.readonly \
        --auth private_key_jwt --public-key job-public.pem
    """
    matches = {"subject_dn": tls_subject, "san_dns": tls_san_dns, "san_uri": tls_san_uri,
               "san_ip": tls_san_ip, "san_email": tls_san_email}
    given = {k: v for k, v in matches.items() if v is not None}
    if len(given) > 1:
        raise click.UsageError("name one of --tls-subject, --tls-san-dns, --tls-san-uri, "
                               "--tls-san-ip, --tls-san-email")
    match, value = next(iter(given.items()), (None, None))
    auth = clients.ClientAuth(
        method=method, ca_pem=tls_ca.read_text() if tls_ca else None, match=match,
        match_value=value, certificates=tuple(p.read_text() for p in tls_certs),
        public_key_pem=public_key.read_text() if public_key else None, jwks_url=jwks_url,
    )
    with get_db().transaction() as session:
        issued = clients.create_client(
            session, tenants.get_tenant(session, slug), name=name, scopes=scopes,
            ip_ranges=ip_ranges, actor=actor(), auth=auth, methods=methods or None,
        )
    if issued.client_secret:
        _print_issued(issued, as_json)
    elif as_json:
        click.echo(json.dumps({"client_id": issued.client_id, "auth_method": method}))
    else:
        click.echo(f"client_id:     {issued.client_id}")
        how = ("sign an assertion with its private key (client_assertion)"
               if method == "private_key_jwt"
               else "send client_id in the body over mutual TLS")
        click.echo(f"It authenticates with {method}: {how}.", err=True)


@client.command("rotate-secret")
@click.argument("client_id")
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="how long the old secret keeps working: 0h ends it at once, at most 30d")
@options.as_json
def client_rotate(client_id: str, grace: str, as_json: bool) -> None:
    """Give client CLIENT_ID a new secret; the old one works through the grace period.

    \b
    Example:
      broker client rotate-secret cl_0123456789abcdef0123 --grace 1h
    """
    delay = clients.parse_grace(grace)
    with get_db().transaction() as session:
        issued = clients.rotate_secret(
            session, client_id, grace=delay, now=get_clock()(), actor=actor()
        )
    _print_issued(issued, as_json)


@client.command("disable")
@click.argument("client_id")
def client_disable(client_id: str) -> None:
    """Disable client CLIENT_ID: its next call is refused (there is no undo; create another)."""
    with get_db().transaction() as session:
        clients.disable_client(session, client_id, actor=actor())
    click.echo(f"disabled {client_id}")


@client.command("set-methods")
@click.argument("client_id")
@click.option("--method", "methods", multiple=True, metavar="ID",
              help="a Gmail method the client may call through /proxy/, by discovery id; "
                   "repeatable")
@click.option("--default", "by_scopes", is_flag=True,
              help="drop the list: every method the client's scopes permit")
@options.as_json
def client_set_methods(
    client_id: str, methods: tuple[str, ...], by_scopes: bool, as_json: bool
) -> None:
    """Set the Gmail methods client CLIENT_ID may call through the proxy (others: 403).

    \b
    Examples:
      broker client set-methods cl_0123 --method gmail.users.messages.list \\
        --method gmail.users.messages.get
      broker client set-methods cl_0123 --default
    """
    if bool(methods) == by_scopes:
        raise click.UsageError("give --method (repeatable) or --default, not both")
    with get_db().transaction() as session:
        clients.set_methods(session, client_id, None if by_scopes else methods, actor=actor())
        row = clients.get_client(session, client_id)
        allowed = clients.allowed_methods(row)
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "methods": allowed,
                               "default": by_scopes}))
        return
    click.echo(f"{client_id} may call {len(allowed)} Gmail method(s)"
               + (" (what its scopes permit)" if by_scopes else "") + ":")
    for method in allowed:
        click.echo(f"  {method}")


@client.command("list")
@options.tenant
@options.as_json
def client_list(slug: str, as_json: bool) -> None:
    """List a tenant's clients (never their secrets)."""
    with get_db().transaction(write=False) as session:
        rows: list[dict[str, Any]] = [
            {"client_id": c.id, "name": c.name, "status": c.status,
             "scopes": c.allowed_scopes, "ip_ranges": c.allowed_ip_ranges,
             "gmail_methods": c.gmail_methods}
            for c in clients.list_clients(session, tenants.get_tenant(session, slug))
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['client_id']}\t{r['status']}\t{r['name']}\t{' '.join(r['scopes'])}")


@click.group(cls=AppGroup)
def webhook() -> None:
    """Register, list and disable the HTTPS endpoints told when a connection changes state.

    Each delivery is signed with the webhook's secret (shown once) and retried by the worker.
    """


@webhook.command("add")
@click.argument("url")
@options.tenant
@click.option("--event", "events", multiple=True, type=click.Choice(webhooks.EVENTS),
              help="an event to deliver (default: every event); repeatable")
@click.option("--client-cert", type=PEM_FILE,
              help="two-way TLS: the certificate chain (PEM, leaf first) deliveries present")
@click.option("--client-key", type=PEM_FILE,
              help="two-way TLS: its private key (PEM); stored sealed, never shown again")
@options.as_json
def webhook_add(
    url: str, slug: str, events: tuple[str, ...], client_cert: Path | None,
    client_key: Path | None, as_json: bool,
) -> None:
    """Register the https:// endpoint URL; print its signing secret once.

    Private, loopback and link-local addresses are refused (the broker would be calling its
    own network).

    \b
    Example:
      broker webhook add https://hooks.acme.test/broker --tenant acme \\
        --event connection.needs_reauth
      broker webhook add https://hooks.acme.test/broker --tenant acme \\
        --client-cert hooks-client.pem --client-key hooks-client-key.pem
    """
    with get_db().transaction() as session:
        added = webhooks.add(
            session, get_keys(), tenants.get_tenant(session, slug).id, url=url,
            events=list(events) or None,
            allow_private=current_app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE, actor=actor(),
            client_cert=client_cert.read_text() if client_cert else None,
            client_key=client_key.read_bytes() if client_key else None,
        )
        hook_id = str(added.webhook.id)
    if as_json:
        click.echo(json.dumps({"id": hook_id, "secret": added.secret}))
    else:
        click.echo(f"webhook {hook_id}\nsigning secret: {added.secret}")


@webhook.command("list")
@options.tenant
def webhook_list(slug: str) -> None:
    """List a tenant's webhooks."""
    with get_db().transaction(write=False) as session:
        for hook in webhooks.list_webhooks(session, tenants.get_tenant(session, slug).id):
            click.echo(f"{hook.id}\t{hook.status}\t{hook.url}\t{','.join(hook.events) or '*'}")


@webhook.command("disable")
@click.argument("webhook_id")
def webhook_disable(webhook_id: str) -> None:
    """Stop deliveries to webhook WEBHOOK_ID (its id from `broker webhook list`)."""
    try:
        wanted = uuid.UUID(webhook_id)
    except ValueError:
        raise InvalidRequest(f"not a webhook id: {webhook_id[:60]!r}") from None
    with get_db().transaction() as session:
        webhooks.disable(session, wanted, actor=actor())
    click.echo(f"disabled {webhook_id}")


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by `nice` (its threads inherit it).

    Linux weighs each session's autogroup against the others and a nice only within its
    group, so a worker leading a session of its own (started with setsid, as a service
    manager does) lowers its group too, or the nice would change nothing. In a session it
    shares (a terminal's), the group is left alone: that would lower its neighbours as well.
    """
    if not nice:
        return
    os.nice(nice)
    if os.getsid(0) != os.getpid():
        return
    try:
        with open("/proc/self/autogroup", "w", encoding="ascii") as group:
            group.write(str(nice))
    except OSError:
        pass  # no autogroups here (another system, or turned off): the nice is what counts


@click.command("worker")
@with_appcontext
@click.option("--once", is_flag=True,
              help="run every duty once, print what each did as JSON and exit (for cron); "
                   "exit 1 if a duty failed")
@click.option("--interval", default=15.0, show_default=True,
              help="seconds between passes (with --once: how often you run it, which pages use "
                   "to tell a stopped worker)")
@click.option("--nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="lower the worker's CPU priority by this much, so that a `broker serve` on "
                   "the same machine is answered first (the worker refreshes ahead of need)")
def worker_command(once: bool, interval: float, nice: int) -> None:
    """Run the background worker: refresh ahead, chain and count the audit log, retry
    revocations, deliver webhooks, re-seal under new keys, purge what policy says to.

    Several workers may run at once (they claim work with row locks). The admin pages warn
    when no pass completed for a while.
    """
    from broker import worker

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    get_keys(app)
    lower_priority(nice)
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
    stop = threading.Event()

    def stop_worker(signum: int, _frame: object) -> None:
        # Only an event: an exception raised here could land anywhere, even inside a lock the
        # refresh threads need. A second signal is the default's again: it ends the process.
        signal.signal(signum, signal.SIG_DFL)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_worker)
    worker.run(app, interval=interval, stop=stop)


COMMANDS = [client, webhook, worker_command]
