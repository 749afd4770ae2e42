"""`broker keys …`: phased master rotation, tenant rotation, re-seal."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from broker.cli.actor import actor
from broker.db import get_db
from broker.keys import FileKeyProvider, get_keys, new_key, new_key_id, reseal_tenant
from broker.models import DataKey, Tenant
from broker.tenancy import key_rotation, tenants


def _key_file() -> FileKeyProvider:
    settings = current_app.config["BROKER"]
    if settings.MASTER_KEYS:
        raise click.ClickException(
            "master keys come from BROKER_MASTER_KEYS: change that variable on every process"
        )
    return FileKeyProvider(settings.master_keys_file)


@click.group(cls=AppGroup)
def keys() -> None:
    """Master and tenant key rotation."""


@keys.command("list")
def keys_list() -> None:
    """List master key ids and data key versions (never key material)."""
    service = get_keys()
    click.echo("master keys (primary first): " + ", ".join(service.keyring.ids()))
    with get_db().transaction(write=False) as session:
        rows = session.execute(
            select(DataKey, Tenant.slug)
            .outerjoin(Tenant, Tenant.id == DataKey.tenant_id)
            .order_by(Tenant.slug, DataKey.version)
        )
        for dek, slug in rows:
            state = "retired" if dek.retired_at else "live"
            click.echo(f"{slug or '(system)'}\tv{dek.version}\t{state}\t"
                       f"master={dek.master_key_id}\tseals={dek.seal_count}")


@keys.command("add-master")
def add_master() -> None:
    """Add a new master key, known everywhere but not yet primary."""
    provider = _key_file()
    ring = provider.load()
    key_id = new_key_id()
    ring[key_id] = new_key()
    provider.write(ring)
    click.echo(f"added master key {key_id}; run `broker keys rotate-master` once every "
               "process has it")


@keys.command("rotate-master")
@click.argument("key_id", required=False)
def rotate_master(key_id: str | None) -> None:
    """Make a master key primary (default: the newest) and rewrap every data key under it."""
    provider = _key_file()
    ring = provider.load()
    key_id = key_id or list(ring)[-1]
    if key_id not in ring:
        raise click.ClickException(f"no master key {key_id!r} in {provider.source}")
    before = next(iter(ring))
    provider.write({key_id: ring[key_id], **{k: v for k, v in ring.items() if k != key_id}})
    service = get_keys()
    service.keyring.reload()
    with get_db().transaction() as session:
        count = key_rotation.rotate_master(session, service, before=before, actor=actor())
    click.echo(f"{key_id} is primary; rewrapped {count} keys")


@keys.command("retire-master")
@click.argument("key_id")
def retire_master(key_id: str) -> None:
    """Remove a master key, refused while any data key is wrapped by it."""
    provider = _key_file()
    ring = provider.load()
    if key_id not in ring:
        raise click.ClickException(f"no master key {key_id!r} in {provider.source}")
    if key_id == next(iter(ring)):
        raise click.ClickException(f"{key_id} is the primary key; rotate to another first")
    with get_db().transaction(write=False) as session:
        users = get_keys().master_key_users(session, key_id)
    if users:
        raise click.ClickException(f"{key_id} still wraps {users} keys; run "
                                   "`broker keys rotate-master` first")
    del ring[key_id]
    provider.write(ring)
    click.echo(f"retired master key {key_id}")


@keys.command("rotate-tenant")
@click.argument("slug")
@click.option("--reseal/--no-reseal", default=True, help="re-seal old rows now")
def rotate_tenant(slug: str, reseal: bool) -> None:
    """Make a new data key for a tenant's new writes, then re-seal old rows."""
    service = get_keys()
    with get_db().transaction() as session:
        tenant_id = tenants.get_tenant(session, slug).id
        version = key_rotation.rotate(session, service, tenant_id, actor=actor())
    click.echo(f"{slug}: data key v{version} is current")
    if reseal:
        report = reseal_tenant(service, get_db(), tenant_id)
        click.echo(f"re-sealed {report.resealed} values; retired versions "
                   f"{list(report.retired) or 'none'}; unreadable {report.unreadable}")


@keys.command("reseal")
@click.argument("slug")
def reseal(slug: str) -> None:
    """Re-seal a tenant's old rows under its newest key and retire unused keys."""
    with get_db().transaction(write=False) as session:
        tenant_id = tenants.get_tenant(session, slug).id
    report = reseal_tenant(get_keys(), get_db(), tenant_id)
    click.echo(f"re-sealed {report.resealed} values; retired versions "
               f"{list(report.retired) or 'none'}; unreadable {report.unreadable}")


COMMANDS = [keys]
