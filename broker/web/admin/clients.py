"""Admin page /admin/clients: create (secret shown once), rotate, disable, edit API clients."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.errors import Conflict, InvalidRequest
from broker.scopes import GMAIL_SCOPES
from broker.tenancy import clients as client_service
from broker.tenancy import policy, tenants
from broker.web import guard
from broker.web.admin import access

bp = Blueprint("clients", __name__, url_prefix="/clients")


@bp.get("")
def index() -> str:
    """List the tenant's API clients, with a form to create one."""
    with get_db().transaction(write=False) as session:
        tenant = tenants.tenant_by_id(session, access.tenant_id())
        rows = client_service.list_clients(session, tenant)
    return render_template("admin/clients.html", clients=rows, gmail_scopes=GMAIL_SCOPES)


def _secret_page(client_id: str, secret: str, *, rotated: bool) -> str:
    # The secret goes into this answer only: not a URL, not a flash cookie, not a log.
    return render_template(
        "admin/client_secret.html", client_id=client_id, secret=secret, rotated=rotated,
        token_url=current_app.config["BROKER"].PUBLIC_URL.rstrip("/") + "/api/v1/token",
    )


@bp.post("")
def create() -> Response | str:
    """Create a client and show its secret this once."""
    try:
        with get_db().transaction() as session:
            tenant = tenants.tenant_by_id(session, access.tenant_id())
            issued = client_service.create_client(
                session, tenant, name=request.form.get("name", ""),
                scopes=request.form.getlist("scopes"),
                ip_ranges=policy.split_ranges(request.form.get("ip_ranges", "")),
                actor=access.actor(), ip=access.ip(),
            )
    except InvalidRequest as refused:
        flash(f"Not created: {refused.description}")
        return redirect(url_for("admin.clients.index"), 303)
    return _secret_page(issued.client_id, issued.client_secret, rotated=False)


@bp.get("/<client_id>")
def edit(client_id: str) -> str:
    """Show one client with its rotate, disable and edit forms."""
    with get_db().transaction(write=False) as session:
        row = client_service.get_client(session, client_id, tenant_id=access.tenant_id())
    return render_template("admin/client.html", client=row, gmail_scopes=GMAIL_SCOPES)


@bp.post("/<client_id>")
def update(client_id: str) -> Response:
    """Change a client's allowed scopes and IP ranges."""
    try:
        with get_db().transaction() as session:
            changes = client_service.update_client(
                session, client_id, scopes=request.form.getlist("scopes"),
                ip_ranges=policy.split_ranges(request.form.get("ip_ranges", "")),
                tenant_id=access.tenant_id(), actor=access.actor(), ip=access.ip(),
            )
    except InvalidRequest as refused:
        return access.done(f"Not saved: {refused.description}", "admin.clients.edit",
                           client_id=client_id)
    access.forget_cached_clients()
    return access.done("Saved." if changes else "Nothing changed.", "admin.clients.edit",
                       client_id=client_id)


@bp.post("/<client_id>/rotate")
def rotate(client_id: str) -> Response | str:
    """Give the client a new secret, shown once; the old one works during the grace period."""
    try:
        grace = client_service.parse_grace(request.form.get("grace", ""))
        with get_db().transaction() as session:
            issued = client_service.rotate_secret(
                session, client_id, grace=grace, now=guard.now(), tenant_id=access.tenant_id(),
                actor=access.actor(), ip=access.ip(),
            )
    except (InvalidRequest, Conflict) as refused:
        return access.done(f"Not rotated: {refused.description}", "admin.clients.edit",
                           client_id=client_id)
    access.forget_cached_clients()
    return _secret_page(issued.client_id, issued.client_secret, rotated=True)


@bp.post("/<client_id>/disable")
def disable(client_id: str) -> Response:
    """Disable a client: its credentials stop working."""
    with get_db().transaction() as session:
        client_service.disable_client(
            session, client_id, tenant_id=access.tenant_id(), actor=access.actor(),
            ip=access.ip(),
        )
    access.forget_cached_clients()
    return access.done(f"Client {client_id} is disabled.", "admin.clients.index")
