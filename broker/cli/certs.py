"""`broker certs …`: check certificate chain files the way the broker and its peers read them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from broker.cli import options
from broker.clock import get_clock
from broker.db import get_db
from broker.tenancy import certificates, tenants
from broker.tls import TlsConfigError, check_chain, describe

READABLE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group("certs", cls=AppGroup)
def certs() -> None:
    """Check the certificate chains the broker serves or is given (files, not stores)."""


@certs.command("check", with_appcontext=False)
@click.argument("chain_file", metavar="FILE", type=READABLE)
@click.option("--key", "key_file", type=READABLE,
              help="the private key (PEM) that must match the first certificate")
def certs_check(chain_file: Path, key_file: Path | None) -> None:
    """Check that FILE is a chain to serve: leaf first, each certificate signed by the next,
    no root, every certificate within its validity, and (with --key) the key matching the leaf.

    Exits 1 after naming each problem and what to do about it.

    \b
    Example:
      broker certs check /etc/broker/chain.pem --key /etc/broker/key.pem
    """
    try:
        report = check_chain(chain_file.read_bytes(), dt.datetime.now(dt.UTC),
                             key_file.read_bytes() if key_file else None)
    except TlsConfigError as exc:
        raise click.ClickException(f"{chain_file}: {exc}") from None
    count = len(report.certificates)
    click.echo(f"{chain_file}: {count} certificate{'s' if count != 1 else ''}")
    for i, cert in enumerate(report.certificates, 1):
        click.echo(f"  {i}. {describe(cert)}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        many = len(report.problems)
        raise click.ClickException(f"{many} problem{'s' if many != 1 else ''} in {chain_file}")
    click.echo("ok: leaf first, each signed by the next, no root, all within validity"
               + (", the key matches the leaf" if key_file else ""))


@certs.command("list")
@click.option("--tenant", "slug", metavar="SLUG", help="one tenant's certificates (default: "
              "every tenant's, and the broker's own chain from BROKER_TLS_CERT)")
@options.as_json
def certs_list(slug: str | None, as_json: bool) -> None:
    """List every certificate the broker trusts or presents, the soonest to expire first:
    its server chain, tenants' client CAs and pinned client certificates, and webhook client
    certificates, with subject, issuer, SHA-256 thumbprint and end of validity."""
    now = get_clock()()
    with get_db().transaction(write=False) as session:
        tenant_id = tenants.get_tenant(session, slug).id if slug else None
        entries = certificates.inventory(session, tenant_id,
                                         current_app.config["BROKER"].TLS_CERT)
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(e), "not_after": e.not_after.isoformat()}
                               for e in entries]))
        return
    if not entries:
        click.echo("No certificates" + (f" for tenant {slug}." if slug else "."))
    for e in entries:
        days = (e.not_after - now).days
        when = f"expired {-days} days ago" if days < 0 else f"{days} days left"
        flag = "  WARNING" if e.expires_within(now) else ""
        owner = f" [{e.tenant}]" if e.tenant else ""
        click.echo(f"{e.kind:<15} {e.name}{owner}\n  subject {e.subject}\n  issuer  {e.issuer}"
                   f"\n  sha256  {e.sha256}\n  until   {e.not_after:%Y-%m-%d %H:%M}Z "
                   f"({when}){flag}")


COMMANDS = [certs]
