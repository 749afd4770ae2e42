"""`broker tenant …` and `broker user …` commands."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from broker.cli import options
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
    """Create, list and delete tenants: organisations whose users' tokens are sealed under
    the tenant's own data key, with their own policy, admins, API clients and audit chain."""


@tenant.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="the name people see, e.g. \"Acme Corp\"")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="a Google Workspace domain whose accounts join this tenant at sign-in "
                   "(checked against Google's `hd` claim); repeatable")
@click.option("--admin", "admin_email", required=True, metavar="EMAIL",
              help="the first admin, invited by exact address (signs in with Google)")
@click.option("--allow-consumer-accounts", is_flag=True,
              help="also admit invited personal Google accounts (gmail.com), not only the "
                   "Workspace domains")
@options.as_json
def tenant_create(
    slug: str, name: str, domains: tuple[str, ...], admin_email: str,
    allow_consumer_accounts: bool, as_json: bool,
) -> None:
    """Create tenant SLUG with its first data key and an invited admin.

    SLUG is a short lowercase name (letters, digits, hyphens) used by every other command.

    \b
    Example:
      broker tenant create acme --name "Acme Corp" --domain acme.com --admin it@acme.com
    """
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
@options.yes
@click.option("--force", is_flag=True,
              help="delete even if Google could not be told to revoke some grants (they "
                   "then stay valid at Google until the user removes them)")
def tenant_delete(slug: str, yes: bool, force: bool) -> None:
    """Revoke tenant SLUG's grants at Google, shred its keys and delete it (no undo)."""
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
@options.as_json
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
    """Invite, list, suspend, promote and delete the people of a tenant.

    People sign in with Google; an invitation binds to the Google account that first signs in
    with its exact address. Suspending ends sessions and stops hand-outs at once.
    """


@user.command("list")
@options.tenant
@options.as_json
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
@options.tenant
@click.option("--admin", is_flag=True, help="invite as an admin (default: a member)")
def user_invite(email: str, slug: str, admin: bool) -> None:
    """Invite EMAIL, by exact address, to sign in with Google and connect Gmail.

    \b
    Example:
      broker user invite bob@acme.com --tenant acme
    """
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
    @options.tenant
    @with_appcontext
    def command(email: str, slug: str) -> None:
        with get_db().transaction() as session:
            row = users.set_status(
                session, tenants.get_tenant(session, slug).id, email, status,
                now=get_clock()(), actor=actor(),
            )
            click.echo(f"{row.email}: {row.status}")

    return command


user.add_command(_status_command("suspend", "suspended", "Suspend user EMAIL: their "
                                 "sessions end and hand-outs of their tokens stop at once."))
user.add_command(_status_command("reactivate", "active", "Let suspended user EMAIL sign in "
                                 "and be served again."))


@user.command("role")
@click.argument("email")
@click.argument("role", type=click.Choice(users.ROLES))
@options.tenant
def user_role(email: str, role: str, slug: str) -> None:
    """Make user EMAIL an admin or a member (the last active admin stays one)."""
    with get_db().transaction() as session:
        row = users.set_role(
            session, tenants.get_tenant(session, slug).id, email, role, actor=actor()
        )
        click.echo(f"{row.email}: {row.role}")


@user.command("delete")
@click.argument("email")
@options.tenant
@options.yes
@click.option("--force", is_flag=True,
              help="delete even if Google could not be told to revoke the grant")
def user_delete(email: str, slug: str, yes: bool, force: bool) -> None:
    """Revoke user EMAIL's grant at Google, erase the connection and delete the user."""
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
