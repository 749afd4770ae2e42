"""`broker audit verify` and `broker audit head`: the chains and their signed checkpoints."""

from __future__ import annotations

import sys
import uuid

import click
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.db import get_db
from broker.keys import get_keys
from broker.models import SYSTEM_CHAIN, AuditEvent, Tenant
from broker.tenancy import tenants


@click.group("audit", cls=AppGroup)
def audit_group() -> None:
    """Check the audit log's hash chains and print signed checkpoints to keep elsewhere.

    Every event is chained per tenant by the worker; a checkpoint recorded outside the broker
    (`broker audit head`) lets `verify --expect` catch a truncated or rewritten history.
    """


def _chains(session: Session) -> list[tuple[str, uuid.UUID]]:
    """Return every chain with its name: a tenant's slug, a deleted tenant's id, or system."""
    slugs = {tenant_id: slug for tenant_id, slug in session.execute(select(Tenant.id, Tenant.slug))}
    ids = session.scalars(select(AuditEvent.chain_id).distinct()).all()
    named = [
        ("system" if c == SYSTEM_CHAIN else slugs.get(c) or f"deleted tenant {c}", c)
        for c in ids
    ]
    return sorted(named, key=lambda pair: (pair[1] == SYSTEM_CHAIN, pair[0]))


@audit_group.command("verify")
@click.option("--tenant", "slug", help="one tenant (default: every chain)")
@click.option("--expect", "expected", metavar="SEQ:MAC",
              help="a checkpoint recorded earlier (`broker audit head` or the metrics)")
def audit_verify(slug: str | None, expected: str | None) -> None:
    """Verify the audit chains read-only; exit 1 naming the first problem found."""
    keys, bad = get_keys(), False
    if expected:
        audit.parse_checkpoint(expected)  # nonsense is refused before any work
    with get_db().transaction(write=False) as session:
        if slug:
            targets = [(slug, tenants.get_tenant(session, slug).id)]
        else:
            targets = _chains(session)
        for label, chain_id in targets:
            verdict = audit.verify(session, keys, chain_id)
            if verdict.first_bad is not None:
                bad = True
                click.echo(f"{label}: BROKEN at event {verdict.first_bad}: {verdict.problem}",
                           err=True)
            for event_id, why in verdict.refused:
                bad = True
                click.echo(f"{label}: event {event_id} {why} (inserted by hand?)", err=True)
            if verdict.ok:
                click.echo(f"{label}: ok, {verdict.chained} chained, {verdict.pending} pending, "
                           f"head {verdict.head[:16] or '-'}")
        problem = audit.check_checkpoint(session, keys, expected) if expected else ""
    if problem:
        click.echo(f"checkpoint FAILED: {problem}", err=True)
        sys.exit(1)
    if expected:
        click.echo(f"checkpoint {expected.strip().split(':')[0]}: ok")
    if bad:
        sys.exit(1)


@audit_group.command("head")
def audit_head() -> None:
    """Print the signed checkpoint of every chain's head as SEQ:MAC, to record elsewhere."""
    with get_db().transaction(write=False) as session:
        point = audit.checkpoint(session, get_keys())
    if point is None:
        raise click.ClickException("nothing is chained yet; run `broker worker --once`")
    click.echo(str(point))


COMMANDS = [audit_group]
