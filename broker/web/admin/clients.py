"""Admin page /admin/clients: create and rotate (secret shown once, after a redirect), edit."""

from __future__ import annotations

import re

from cryptography import x509
from flask import Blueprint, current_app, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.errors import Conflict, InvalidRequest
from broker.google import gmail_methods
from broker.scopes import GMAIL_SCOPES
from broker.tenancy import clients as client_service
from broker.tenancy import policy, tenants
from broker.tls import thumbprint
from broker.web import guard
from broker.web.admin import access, once

bp = Blueprint("clients", __name__, url_prefix="/clients")


MATCH_LABELS = {"subject_dn": "subject DN", "san_dns": "DNS name (SAN)",
                "san_uri": "URI (SAN)", "san_ip": "IP address (SAN)", "san_email": "email (SAN)"}


def _form(values: dict[str, object] | None = None) -> dict[str, object]:
    """Return a client form's values: what was typed, or empty."""
    return values or {"name": "", "scopes": [], "ip_ranges": "", "auth": "client_secret_basic",
                      "tls_ca": "", "tls_match": "san_uri", "tls_match_value": "", "tls_cert": "",
                      "public_key": "", "jwks_url": ""}


def _typed() -> dict[str, object]:
    return {
        "name": request.form.get("name", "")[:200],
        "scopes": request.form.getlist("scopes"),
        "ip_ranges": request.form.get("ip_ranges", "")[:4000],
        "auth": request.form.get("auth", "client_secret_basic")[:40],
        "tls_ca": request.form.get("tls_ca", "")[:20_000],
        "tls_match": request.form.get("tls_match", "")[:20],
        "tls_match_value": request.form.get("tls_match_value", "")[:500],
        "tls_cert": request.form.get("tls_cert", "")[:40_000],
        "public_key": request.form.get("public_key", "")[:20_000],
        "jwks_url": request.form.get("jwks_url", "")[:2000],
    }


def _auth_from_form() -> client_service.ClientAuth:
    """Read the authentication part of the create form (only the method's own fields count)."""
    method = request.form.get("auth", "client_secret_basic")
    if method == "tls_client_auth":
        return client_service.ClientAuth(
            method, request.form.get("tls_ca", "").strip()[:20_000] or None,
            request.form.get("tls_match") or None,
            request.form.get("tls_match_value", "")[:500])
    if method == "self_signed_tls_client_auth":
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                          request.form.get("tls_cert", "")[:40_000], re.S)
        return client_service.ClientAuth(method, certificates=tuple(pems))
    if method == "private_key_jwt":
        return client_service.ClientAuth(
            method, public_key_pem=request.form.get("public_key", "").strip()[:20_000] or None,
            jwks_url=request.form.get("jwks_url", "").strip()[:2000] or None)
    return client_service.ClientAuth(method)


def _list_page(form: dict[str, object] | None = None, error: str = "") -> str:
    with get_db().transaction(write=False) as session:
        tenant = tenants.tenant_by_id(session, access.tenant_id())
        rows = client_service.list_clients(session, tenant)
    return render_template("admin/clients.html", clients=rows, gmail_scopes=GMAIL_SCOPES,
                           form=_form(form), error=error, match_labels=MATCH_LABELS)


@bp.get("")
def index() -> str:
    """List the tenant's API clients, with a form to create one."""
    return _list_page()


def _keep_secret(session: Session, issued: client_service.Issued, *, rotated: bool) -> None:
    """Keep the new secret for the next page of this browser session only."""
    once.keep_for_admin(session, {"client_id": issued.client_id,
                                  "secret": issued.client_secret,
                                  "rotated": "yes" if rotated else ""})


@bp.post("")
def create() -> Response | tuple[str, int]:
    """Create a client, keep its secret for one showing, and redirect there."""
    try:
        with get_db().transaction() as session:
            tenant = tenants.tenant_by_id(session, access.tenant_id())
            issued = client_service.create_client(
                session, tenant, name=request.form.get("name", ""),
                scopes=request.form.getlist("scopes"),
                ip_ranges=policy.split_ranges(request.form.get("ip_ranges", "")),
                actor=access.actor(), ip=access.ip(), auth=_auth_from_form(),
            )
            if issued.client_secret:
                _keep_secret(session, issued, rotated=False)
    except (InvalidRequest, Conflict) as refused:
        # The form comes back as typed, with the reason beside it.
        return _list_page(_typed(), f"Not created: {refused.description}"), refused.status_code
    if not issued.client_secret:  # a certificate or keyed client: nothing to show once
        how = ("signs its assertions with its own key"
               if request.form.get("auth") == "private_key_jwt"
               else "authenticates with its certificate over mutual TLS")
        return access.done(f"Client {issued.client_id} created; it {how}.",
                           "admin.clients.edit", client_id=issued.client_id)
    return redirect(url_for("admin.clients.secret", client_id=issued.client_id), 303)


@bp.get("/<client_id>/secret")
def secret(client_id: str) -> str:
    """Show a new secret once; a reload finds it gone and says so."""
    kept = once.take_for_admin(("client_id", client_id))
    return render_template(
        "admin/client_secret.html", client_id=client_id,
        secret=kept["secret"] if kept else None, rotated=bool(kept and kept.get("rotated")),
        token_url=current_app.config["BROKER"].PUBLIC_URL.rstrip("/") + "/api/v1/token",
    )


def _edit_page(client_id: str, form: dict[str, object] | None = None,
               error: str = "") -> str:
    with get_db().transaction(write=False) as session:
        row = client_service.get_client(session, client_id, tenant_id=access.tenant_id())
        ca = client_service.client_ca(session, row)
    pinned = [thumbprint(x509.load_pem_x509_certificate(p.encode()))[:16] + "…"
              for p in row.tls_certificates]
    if form is None:
        form = {"scopes": list(row.allowed_scopes),
                "ip_ranges": "\n".join(row.allowed_ip_ranges)}
    table = gmail_methods()
    return render_template("admin/client.html", client=row, gmail_scopes=GMAIL_SCOPES,
                           form=form, error=error, ca=ca, pinned=pinned,
                           match_labels=MATCH_LABELS,
                           permitted=table.permitted_by(row.allowed_scopes),
                           methods=client_service.allowed_methods(row))


@bp.post("/<client_id>/methods")
def set_methods(client_id: str) -> Response | tuple[str, int]:
    """Set the Gmail methods the client may call through /proxy/ (or go back to its scopes')."""
    chosen = None if request.form.get("default") else request.form.getlist("methods")
    try:
        with get_db().transaction() as session:
            client_service.set_methods(
                session, client_id, chosen, tenant_id=access.tenant_id(),
                actor=access.actor(), ip=access.ip(),
            )
    except InvalidRequest as refused:
        return _edit_page(client_id, error=f"Methods not saved: {refused.description}"), 400
    access.forget_cached_clients()
    return access.done("Gmail methods saved.", "admin.clients.edit", client_id=client_id)


@bp.get("/<client_id>")
def edit(client_id: str) -> str:
    """Show one client with its rotate, disable and edit forms."""
    return _edit_page(client_id)


@bp.post("/<client_id>")
def update(client_id: str) -> Response | tuple[str, int]:
    """Change a client's allowed scopes and IP ranges."""
    try:
        with get_db().transaction() as session:
            changes = client_service.update_client(
                session, client_id, scopes=request.form.getlist("scopes"),
                ip_ranges=policy.split_ranges(request.form.get("ip_ranges", "")),
                tenant_id=access.tenant_id(), actor=access.actor(), ip=access.ip(),
            )
    except InvalidRequest as refused:
        return _edit_page(client_id, _typed(), f"Not saved: {refused.description}"), 400
    access.forget_cached_clients()
    if not changes:
        return access.done("Nothing changed.", "admin.clients.edit", kind="info",
                           client_id=client_id)
    return access.done("Saved.", "admin.clients.edit", client_id=client_id)


@bp.post("/<client_id>/rotate")
def rotate(client_id: str) -> Response:
    """Give the client a new secret, shown once; the old one works during the grace period."""
    try:
        grace = client_service.parse_grace(request.form.get("grace", ""))
        with get_db().transaction() as session:
            issued = client_service.rotate_secret(
                session, client_id, grace=grace, now=guard.now(), tenant_id=access.tenant_id(),
                actor=access.actor(), ip=access.ip(),
            )
            _keep_secret(session, issued, rotated=True)
    except (InvalidRequest, Conflict) as refused:
        return access.done(f"Not rotated: {refused.description}", "admin.clients.edit",
                           kind="error", client_id=client_id)
    access.forget_cached_clients()
    return redirect(url_for("admin.clients.secret", client_id=issued.client_id), 303)


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
