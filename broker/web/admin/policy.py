"""Admin page /admin/policy: every policy field, validated, with a lock-out guard."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.scopes import GMAIL_SCOPES
from broker.tenancy import policy as policies
from broker.web import guard
from broker.web.admin import access

bp = Blueprint("policy", __name__, url_prefix="/policy")


def _render(values: dict[str, Any], *, errors: dict[str, str] | None = None,
            lockout: bool = False, status: int = 200) -> tuple[str, int]:
    page = render_template(
        "admin/policy.html", values=values, errors=errors or {}, lockout=lockout,
        gmail_scopes=GMAIL_SCOPES, my_ip=str(guard.ip()),
    )
    return page, status


@bp.get("")
def index() -> tuple[str, int]:
    """Show the tenant's policy as an editable form."""
    with get_db().transaction(write=False) as session:
        values = policies.form_values(policies.get_policy(session, access.tenant_id()))
    return _render(values)


@bp.post("")
def save() -> Response | tuple[str, int]:
    """Validate and apply the policy; a change that would lock the admin out needs a tick."""
    submitted: dict[str, Any] = {key: request.form.get(key, "") for key in policies.FIELDS}
    submitted["offered_scopes"] = request.form.getlist("offered_scopes")
    try:
        values = policies.parse_form(request.form, submitted["offered_scopes"])
    except policies.PolicyInvalid as invalid:
        return _render(submitted, errors=invalid.errors, status=400)
    try:
        with get_db().transaction() as session:
            changes = policies.update_policy(
                session, access.tenant_id(), values, admin_ip=guard.ip(),
                confirmed=request.form.get("confirm_lockout") == "yes",
                actor=access.actor(), ip=access.ip(),
            )
    except policies.LockoutRisk:
        return _render(submitted, lockout=True, status=409)
    access.forget_cached_clients()
    if not changes:
        return access.done("Nothing changed.", "admin.policy.index", kind="info")
    names = ", ".join(name.replace("_", " ") for name in changes)
    return access.done(f"Policy saved: {names}.", "admin.policy.index")
