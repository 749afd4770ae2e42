"""`broker tenant …` and `broker user …` commands."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from broker.cli.actor import actor
from broker.clock import get_clock
from broker.connections import revoke_before_delete
from broker.db import get_db
from broker.identity import signin_url
from broker.keys import get_keys
from broker.models import Connection, Tenant, User
from broker.tenancy import tenants, users


@click.group(cls=AppGroup)
def tenant() -> None:
    """Manage tenants."""


@tenant.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="display name")
@click.option("--domain", "domains", multiple=True, help="Workspace domain (repeatable)")
@click.option("--admin", "admin_email", required=True, help="email of the invited first admin")
@click.option("--allow-consumer-accounts", is_flag=True, help="admit invited gmail.com users")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def tenant_create(
    slug: str, name: str, domains: tuple[str, ...], admin_email: str,
    allow_consumer_accounts: bool, as_json: bool,
) -> None:
    """Create a tenant with its first data key and an invited admin."""
    keys = get_keys()
    with get_db().transaction() as session:
        row = tenants.create_tenant(
            session, keys, slug=slug, name=name, domains=domains, admin_email=admin_email,
            allow_consumer_accounts=allow_consumer_accounts, actor=actor(),
        )
        tenant_id = str(row.id)
    if as_json:
        click.echo(json.dumps({"id": tenant_id, "slug": slug}))
    else:
        click.echo(f"created tenant {slug} ({tenant_id}); {admin_email} invited as admin")


@tenant.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--force", is_flag=True, help="delete even if some grants could not be revoked")
def tenant_delete(slug: str, yes: bool, force: bool) -> None:
    """Revoke a tenant's grants at Google, shred its keys and delete it."""
    if not yes:
        click.confirm(f"Delete tenant {slug} and destroy all of its tokens?", abort=True)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with get_db().transaction(write=False) as session:
        ids = tenants.connection_ids(session, tenants.get_tenant(session, slug))
    failed = revoke_before_delete(app, ids, force=force, actor_id=actor())
    with get_db().transaction() as session:
        tenants.delete_tenant(
            session, get_keys(), tenants.get_tenant(session, slug), actor=actor()
        )
    note = f" ({failed} grants could not be revoked)" if failed else ""
    click.echo(f"deleted tenant {slug}; its data keys are destroyed{note}")


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def tenant_list(as_json: bool) -> None:
    """List tenants."""
    with get_db().transaction(write=False) as session:
        rows = [
            {"id": str(t.id), "slug": t.slug, "name": t.name,
             "domains": tenants.tenant_domains(session, t)}
            for t in session.scalars(select(Tenant).order_by(Tenant.slug))
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        # Silence would look like a failure or a wrong database; say so and what to do.
        click.echo("no tenants yet; create one with `broker tenant create SLUG --name NAME "
                   "--admin EMAIL`")
        return
    for row in rows:
        click.echo(f"{row['slug']}\t{row['name']}\t{','.join(row['domains'])}")


@click.group(cls=AppGroup)
def user() -> None:
    """Manage users of a tenant."""


@user.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def user_list(slug: str, as_json: bool) -> None:
    """List a tenant's users with their connection status."""
    with get_db().transaction(write=False) as session:
        row = tenants.get_tenant(session, slug)
        query = (
            select(User, Connection.status)
            .outerjoin(Connection, Connection.user_id == User.id)
            .where(User.tenant_id == row.id)
            .order_by(User.email)
        )
        rows = [
            {"id": str(u.id), "email": u.email, "role": u.role, "status": u.status,
             "connection": status or "none"}
            for u, status in session.execute(query)
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['email']}\t{r['role']}\t{r['status']}\tconnection: {r['connection']}")


@user.command("invite")
@click.argument("email")
@click.option("--tenant", "slug", required=True)
@click.option("--admin", is_flag=True, help="invite as an admin")
def user_invite(email: str, slug: str, admin: bool) -> None:
    """Invite a user by exact email address."""
    with get_db().transaction() as session:
        invited = users.invite(
            session, tenants.get_tenant(session, slug).id, email,
            role="admin" if admin else "member", actor=actor(),
        )
        click.echo(f"invited {invited.email} to {slug} as {invited.role}")
        link = signin_url(session, current_app.config["BROKER"].PUBLIC_URL, invited.tenant_id,
                          invited.email)
        if link:  # a personal account joins only through its tenant's own sign-in link
            click.echo(f"sign-in link to send: {link}")


def _status_command(name: str, status: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("email")
    @click.option("--tenant", "slug", required=True)
    @with_appcontext
    def command(email: str, slug: str) -> None:
        with get_db().transaction() as session:
            row = users.set_status(
                session, tenants.get_tenant(session, slug).id, email, status,
                now=get_clock()(), actor=actor(),
            )
            click.echo(f"{row.email}: {row.status}")

    return command


user.add_command(_status_command("suspend", "suspended", "Suspend a user: sessions end, "
                                 "hand-outs stop at once."))
user.add_command(_status_command("reactivate", "active", "Reactivate a suspended user."))


@user.command("role")
@click.argument("email")
@click.argument("role", type=click.Choice(users.ROLES))
@click.option("--tenant", "slug", required=True)
def user_role(email: str, role: str, slug: str) -> None:
    """Make a user an admin or a member (the last active admin stays one)."""
    with get_db().transaction() as session:
        row = users.set_role(
            session, tenants.get_tenant(session, slug).id, email, role, actor=actor()
        )
        click.echo(f"{row.email}: {row.role}")


@user.command("delete")
@click.argument("email")
@click.option("--tenant", "slug", required=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--force", is_flag=True, help="delete even if the grant could not be revoked")
def user_delete(email: str, slug: str, yes: bool, force: bool) -> None:
    """Revoke and erase a user's connection and delete the user."""
    if not yes:
        click.confirm(f"Delete {email} and revoke their Gmail connection?", abort=True)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with get_db().transaction(write=False) as session:
        ids = users.deletable_connection_ids(
            session, tenants.get_tenant(session, slug).id, email, actor=actor()
        )
    revoke_before_delete(app, ids, force=force, actor_id=actor())
    with get_db().transaction() as session:
        users.delete_user(session, tenants.get_tenant(session, slug).id, email, actor=actor())
    click.echo(f"deleted {email}")


COMMANDS = [tenant, user]
