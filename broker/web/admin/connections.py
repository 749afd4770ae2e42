"""Admin page /admin/connections: every grant of the tenant, those needing re-consent first."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from broker.db import get_db
from broker.tenancy import users
from broker.web.admin import access

bp = Blueprint("connections", __name__, url_prefix="/connections")
REASONS = {
    "revoked_or_expired": "revoked at Google or expired",
    "reauth_policy": "Google requires the user to sign in again",
    "unused_too_long": "unused for too long",
    "testing_app_expiry": "testing-mode grant expired after seven days",
    "token_unreadable": "stored grant can no longer be read",
    "admin_forced": "an admin asked for re-consent",
    "disconnected": "disconnected by the user",
    "deleted": "user deleted",
}


@bp.get("")
def index() -> str:
    """List connections, filtered by status when asked."""
    status = request.args.get("status", "").strip() or None
    with get_db().transaction(write=False) as session:
        rows = users.list_connections(session, access.tenant_id(), status)
    return render_template(
        "admin/connections.html", connections=rows, status=status or "",
        statuses=users.STATUSES, reasons=REASONS,
    )
