"""`broker workload …`: trust rules that let jobs exchange their platform identity for tokens."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from broker.cli import options
from broker.cli.actor import actor
from broker.clock import get_clock
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.tenancy import tenants
from broker.workload import trusts

JSON_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group(cls=AppGroup)
def workload() -> None:
    """Trust rules for jobs without secrets (RFC 8693 token exchange).

    A rule lets a token its platform signed (a Kubernetes service account token, a GitHub
    Actions OIDC token) act as one API client of a tenant, for named users, when its issuer,
    audience, subject and pinned claims all match. Jobs POST it to /api/v1/oauth/token.
    """


def _expiry(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"not a date (like 2027-01-31): {text[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _jwks(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the JWKS file is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the JWKS file is not a JWK Set")
    return document


def _show(rule: dict[str, Any]) -> str:
    claims = " ".join(f"{k}={v}" for k, v in rule["claims"].items())
    return (f"{rule['trust_id']}\t{rule['status']}\t{rule['client_id']}\t{rule['issuer']}\t"
            f"sub={rule['subject']}\t{claims}\tusers={','.join(rule['users'])}")


@workload.command("add")
@options.tenant
@click.option("--client", "client_id", required=True, metavar="CLIENT_ID",
              help="the API client whose scopes, IP ranges, rate limit and audit apply")
@click.option("--issuer", required=True, metavar="URL",
              help="the token's exact iss, e.g. https://token.actions.githubusercontent.com "
                   "(https; http only on loopback)")
@click.option("--audience", "audiences", multiple=True, metavar="AUD",
              help="an aud the token must carry (default: the broker's public URL); "
                   "repeatable")
@click.option("--subject", metavar="SUB", help="the token's exact sub, e.g. "
              "system:serviceaccount:jobs:mailer")
@click.option("--any-subject", is_flag=True,
              help="accept any sub (then pin stable claims with --claim)")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE",
              help="an exact claim value at a dotted path, e.g. repository_id=42 or "
                   "kubernetes.io.namespace=jobs; repeatable")
@click.option("--user", "users", multiple=True, metavar="EMAIL",
              help="a user (email or id) the job may act for; repeatable")
@click.option("--any-user", is_flag=True, help="let the job act for any user of the tenant")
@click.option("--max-lifetime", default=trusts.DEFAULT_LIFETIME, show_default=True,
              type=int, metavar="SECONDS", help="the longest exp - iat accepted")
@click.option("--expires", metavar="DATE", help="the rule stops matching at this date "
              "(UTC, e.g. 2027-01-31)")
@click.option("--jwks-file", type=JSON_FILE, help="pin the issuer's JWK Set (JSON) instead "
              "of fetching it through its discovery document")
@options.as_json
def workload_add(
    slug: str, client_id: str, issuer: str, audiences: tuple[str, ...], subject: str | None,
    any_subject: bool, claims: tuple[str, ...], users: tuple[str, ...], any_user: bool,
    max_lifetime: int, expires: str | None, jwks_file: Path | None, as_json: bool,
) -> None:
    """Add a trust rule; print its id.

    \b
    Examples:
      broker workload add --tenant acme --client cl_0123 \\
        --issuer https://token.actions.githubusercontent.com \\
        --audience https://broker.acme.test --any-subject \\
        --claim repository_id=123456 --claim ref=refs/heads/main --user alice@acme.com
      broker workload add --tenant acme --client cl_0123 \\
        --issuer https://oidc.eks.eu-west-1.amazonaws.com/id/ABC \\
        --subject system:serviceaccount:jobs:mailer --any-user
    """
    spec = trusts.TrustSpec(
        client_id=client_id, issuer=issuer, audiences=audiences, subject=subject,
        any_subject=any_subject, claims=tuple(trusts.parse_claim(c) for c in claims),
        users=users, any_user=any_user, max_lifetime=max_lifetime,
        expires_at=_expiry(expires), jwks=_jwks(jwks_file),
    )
    settings = current_app.config["BROKER"]
    with get_db().transaction() as session:
        row = trusts.add_trust(
            session, tenants.get_tenant(session, slug), spec,
            default_audience=str(settings.PUBLIC_URL).rstrip("/"), now=get_clock()(),
            actor=actor(),
        )
        shown = trusts.describe(row)
    click.echo(json.dumps(shown) if as_json else _show(shown))


@workload.command("list")
@options.tenant
@options.as_json
def workload_list(slug: str, as_json: bool) -> None:
    """List a tenant's trust rules, newest first."""
    with get_db().transaction(write=False) as session:
        rows = [trusts.describe(r)
                for r in trusts.list_trusts(session, tenants.get_tenant(session, slug))]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(_show(row))


@workload.command("disable")
@click.argument("trust_id", metavar="ID")
def workload_disable(trust_id: str) -> None:
    """Disable trust rule ID: tokens it admitted are refused from the next exchange on."""
    with get_db().transaction() as session:
        trusts.disable_trust(session, trust_id, actor=actor())
    click.echo(f"disabled {trust_id}")


COMMANDS = [workload]
