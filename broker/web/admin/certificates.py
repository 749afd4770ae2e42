"""Admin page /admin/certificates: the tenant's client CAs, pinned and webhook certificates."""

from __future__ import annotations

from flask import Blueprint, render_template

from broker.db import get_db
from broker.tenancy import certificates
from broker.web import guard
from broker.web.admin import access

bp = Blueprint("certificates", __name__, url_prefix="/certificates")
KINDS = {"client_ca": "Client CA", "pinned_client": "Pinned client certificate",
         "webhook_client": "Webhook client certificate", "server": "Broker server chain"}


@bp.get("")
def index() -> str:
    """List the certificates, the soonest to expire first, flagging those within 30 days."""
    now = guard.now()
    with get_db().transaction(write=False) as session:
        entries = certificates.inventory(session, access.tenant_id())
    return render_template("admin/certificates.html", entries=entries, now=now, kinds=KINDS)
