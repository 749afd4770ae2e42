"""Admin page /admin/audit: the log newest first, filtered, paginated, CSV, verification."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from werkzeug.wrappers import Response

from broker import audit
from broker.db import get_db
from broker.keys import get_keys
from broker.web import guard
from broker.web.admin import access
from broker.web.admin.worker_status import worker_seen

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("")
def index() -> str:
    """Show one page of the tenant's audit events matching the filter."""
    wanted = audit.parse_filter(request.args)
    with get_db().transaction(write=False) as session:
        page = audit.page_of_events(session, access.tenant_id(), wanted)
        actions = audit.actions(session, access.tenant_id())
        chain = audit.chain_status(session, access.tenant_id(), get_keys())
        worker = worker_seen(session, guard.now())
    return render_template(
        "admin/audit.html", page=page, wanted=wanted, actions=actions, chain=chain,
        outcomes=audit.OUTCOMES, worker=worker,
    )


@bp.get("/export.csv")
def export() -> Response:
    """Download every matching event as CSV, cells formula-escaped."""
    wanted = audit.parse_filter(request.args)
    with get_db().transaction(write=False) as session:
        body = audit.export_csv(session, access.tenant_id(), wanted)
    stamp = guard.now().strftime("%Y%m%dT%H%M%SZ")
    headers: dict[str, Any] = {
        "Content-Disposition": f'attachment; filename="audit-{stamp}.csv"',
        "Cache-Control": "no-store",
    }
    return Response(body, mimetype="text/csv", headers=headers)
