"""Admin page /admin/workload: trust rules for jobs without secrets (add, list, disable)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from flask import Blueprint, current_app, render_template, request
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.errors import InvalidRequest, NotFound
from broker.tenancy import clients, tenants
from broker.web import guard
from broker.web.admin import access
from broker.workload import trusts

bp = Blueprint("workload", __name__, url_prefix="/workload")
FIELDS = ("client_id", "issuer", "audiences", "subject", "claims", "users", "max_lifetime",
          "expires", "jwks")


def _lines(name: str) -> tuple[str, ...]:
    text = request.form.get(name, "")[:20_000]
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _spec() -> trusts.TrustSpec:
    """Read the form: one audience, claim or user per line; `*` as the subject or users."""
    subject = request.form.get("subject", "").strip()[:500]
    users = _lines("users")
    lifetime = request.form.get("max_lifetime", "").strip() or str(trusts.DEFAULT_LIFETIME)
    if not lifetime.isdigit():
        raise InvalidRequest("the maximum lifetime is a whole number of seconds")
    expires = request.form.get("expires", "").strip()
    try:
        until = dt.datetime.fromisoformat(expires).replace(tzinfo=dt.UTC) if expires else None
    except ValueError:
        raise InvalidRequest("the expiry is a date like 2027-01-31") from None
    pinned = request.form.get("jwks", "").strip()[:60_000]
    try:
        jwks: dict[str, Any] | None = json.loads(pinned) if pinned else None
    except ValueError:
        raise InvalidRequest("the pinned JWKS is not JSON") from None
    return trusts.TrustSpec(
        client_id=request.form.get("client_id", "")[:64], issuer=request.form.get("issuer", ""),
        audiences=_lines("audiences"), subject=None if subject in ("", "*") else subject,
        any_subject=subject == "*", claims=tuple(trusts.parse_claim(c) for c in _lines("claims")),
        users=() if users == ("*",) else users, any_user=users == ("*",),
        max_lifetime=int(lifetime), expires_at=until,
        jwks=jwks if isinstance(jwks, dict) or jwks is None else {"keys": "not a set"},
    )


def _page(form: dict[str, str] | None = None, error: str = "") -> str:
    with get_db().transaction(write=False) as session:
        tenant = tenants.tenant_by_id(session, access.tenant_id())
        rules = [trusts.describe(r) for r in trusts.list_trusts(session, tenant)]
        api_clients = [c for c in clients.list_clients(session, tenant) if c.status == "active"]
    public = str(current_app.config["BROKER"].PUBLIC_URL).rstrip("/")
    return render_template("admin/workload.html", rules=rules, clients=api_clients,
                           form=form or dict.fromkeys(FIELDS, ""), error=error,
                           public_url=public)


@bp.get("")
def index() -> str:
    """List the tenant's trust rules, with a form to add one."""
    return _page()


@bp.post("")
def add() -> Response | tuple[str, int]:
    """Add a trust rule; the form comes back as typed with the reason when refused."""
    try:
        spec = _spec()
        with get_db().transaction() as session:
            tenant = tenants.tenant_by_id(session, access.tenant_id())
            row = trusts.add_trust(
                session, tenant, spec,
                default_audience=str(current_app.config["BROKER"].PUBLIC_URL).rstrip("/"),
                now=guard.now(), actor=access.actor(), ip=access.ip(),
            )
            added = str(row.id)
    except (InvalidRequest, NotFound) as refused:
        typed = {name: request.form.get(name, "")[:20_000] for name in FIELDS}
        return _page(typed, f"Not added: {refused.description}"), 400
    return access.done(f"Trust rule {added} added.", "admin.workload.index")


@bp.post("/<uuid:trust_id>/disable")
def disable(trust_id: uuid.UUID) -> Response:
    """Disable a trust rule."""
    with get_db().transaction() as session:
        trusts.disable_trust(session, str(trust_id), tenant_id=access.tenant_id(),
                             actor=access.actor(), ip=access.ip())
    return access.done(f"Trust rule {trust_id} is disabled.", "admin.workload.index")
