"""`broker keys …`: phased master rotation, tenant rotation, re-seal."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from broker.cli.actor import actor
from broker.db import get_db
from broker.keys import (
    CryptoError,
    EnvKeyProvider,
    FileKeyProvider,
    Keyring,
    entry_id,
    format_key_line,
    get_keys,
    init_hsm_key,
    is_reference,
    new_key,
    new_key_id,
    read_pin,
    remote_options,
    reseal_tenant,
)
from broker.models import DataKey, Tenant
from broker.tenancy import key_rotation, tenants


def _key_file() -> FileKeyProvider:
    settings = current_app.config["BROKER"]
    if settings.MASTER_KEYS:
        raise click.ClickException(
            "master keys come from BROKER_MASTER_KEYS: change that variable on every process"
        )
    return FileKeyProvider(settings.master_keys_file, remote_options(current_app))


@click.group(cls=AppGroup)
def keys() -> None:
    """Master and tenant key rotation."""


@keys.command("list")
def keys_list() -> None:
    """List the crypto inventory: each master and what it wraps, then data key versions."""
    service = get_keys()
    click.echo("master keys (primary first): " + ", ".join(service.keyring.ids()))
    with get_db().transaction(write=False) as session:
        for info in service.inventory(session):
            click.echo(
                f"  {info.key_id}\tprovider={info.provider}\t{info.location}\t"
                f"wraps={info.data_keys} data keys, {info.audit_keys} audit keys\t"
                f"exportable={'yes' if info.exportable else 'no'}"
                + ("\tprimary" if info.primary else "")
            )
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
@click.argument("reference", required=False)
def add_master(reference: str | None) -> None:
    """Add a master key, known everywhere but not yet primary: a new local key, or a reference.

    REFERENCE names a key held by a key service (`pkcs11:module=…;token=…;key=…` or
    `awskms:alias/NAME`); it is tried once (wrap and unwrap) before it is written.
    """
    provider = _key_file()
    entries = provider.entries()
    options = remote_options(current_app)
    if reference is None:
        key_id = new_key_id()
        entry = format_key_line(key_id, new_key())
    else:
        if not is_reference(reference):
            raise click.ClickException("a reference starts with pkcs11: or awskms:")
        key_id, entry = entry_id(reference, options), reference
        probe = Keyring(EnvKeyProvider(reference, options))
        blob = probe.wrap(b"\0" * 32, "probe")[1]
        probe.unwrap(key_id, blob, "probe")
    if key_id in [entry_id(e, options) for e in entries]:
        raise click.ClickException(f"master key {key_id!r} is already in {provider.source}")
    provider.write_entries([*entries, entry])
    click.echo(f"added master key {key_id}; run `broker keys rotate-master {key_id}` once every "
               "process has it")


@keys.command("rotate-master")
@click.argument("key_id", required=False)
def rotate_master(key_id: str | None) -> None:
    """Make a master key primary (default: the newest) and rewrap every data key under it."""
    provider = _key_file()
    entries = provider.entries()
    by_id = {entry_id(e, remote_options(current_app)): e for e in entries}
    key_id = key_id or list(by_id)[-1]
    if key_id not in by_id:
        raise click.ClickException(f"no master key {key_id!r} in {provider.source}")
    before = next(iter(by_id))
    provider.write_entries([by_id[key_id], *(e for k, e in by_id.items() if k != key_id)])
    service = get_keys()
    service.keyring.reload()
    try:
        with get_db().transaction() as session:
            count = key_rotation.rotate_master(session, service, before=before, actor=actor())
    except CryptoError:
        # Nothing was rewrapped: put the old primary back so no process wraps under the new one.
        provider.write_entries(entries)
        service.keyring.reload()
        raise
    click.echo(f"{key_id} is primary; rewrapped {count} keys")


@keys.command("retire-master")
@click.argument("key_id")
def retire_master(key_id: str) -> None:
    """Remove a master key, refused while any data key is wrapped by it."""
    provider = _key_file()
    by_id = {entry_id(e, remote_options(current_app)): e for e in provider.entries()}
    if key_id not in by_id:
        raise click.ClickException(f"no master key {key_id!r} in {provider.source}")
    if key_id == next(iter(by_id)):
        raise click.ClickException(f"{key_id} is the primary key; rotate to another first")
    with get_db().transaction(write=False) as session:
        users = get_keys().master_key_users(session, key_id)
    if users:
        raise click.ClickException(f"{key_id} still wraps {users} keys; run "
                                   "`broker keys rotate-master` first")
    provider.write_entries([e for k, e in by_id.items() if k != key_id])
    click.echo(f"retired master key {key_id}")


@keys.command("init-hsm")
@click.option("--module", "module_path", required=True, help="the PKCS#11 library (.so)")
@click.option("--token", required=True, help="label of an initialised token")
@click.option("--key", "label", required=True, help="label of the AES key to create")
def init_hsm(module_path: str, token: str, label: str) -> None:
    """Create a non-exportable AES-256 key on a token; print the BROKER_MASTER_KEYS value."""
    reference = f"pkcs11:module={module_path};token={token};key={label}"
    options = remote_options(current_app)
    entry_id(reference, options)  # validates the labels before the token is touched
    if not Path(module_path).is_file():
        raise click.ClickException(f"{module_path}: no such PKCS#11 library")
    init_hsm_key(module_path, token, label, read_pin(options))
    click.echo(f"BROKER_MASTER_KEYS={reference}")


@keys.command("check")
def check() -> None:
    """Prove every live data and audit key opens with the configured masters (read-only)."""
    service = get_keys()
    with get_db().transaction(write=False) as session:
        problems = service.check(session)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} keys do not open")
    click.echo("every live data and audit key opens")


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
