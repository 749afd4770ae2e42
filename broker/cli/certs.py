"""`broker certs …`: check certificate chain files the way the broker and its peers read them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from flask.cli import AppGroup

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


COMMANDS = [certs]
