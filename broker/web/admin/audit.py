"""Admin page /admin/audit: the log newest first, filtered, paginated, CSV, verification."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, render_template, request
from werkzeug.wrappers import Response

from broker import audit, scopes
from broker.db import get_db
from broker.keys import get_keys
from broker.web import guard
from broker.web.admin import access
from broker.web.admin.worker_status import worker_seen

bp = Blueprint("audit", __name__, url_prefix="/audit")
# Details that say why something was refused come first: they are what an admin looks for.
WHY_KEYS = ("description", "problem", "reason", "google_error")
VALUE_WIDTH = 60


def _short(value: object) -> str:
    """Render one detail value briefly: scopes by short name, lists joined, long text cut."""
    if isinstance(value, str):
        text = value.removeprefix(scopes.PREFIX)
    elif isinstance(value, list | tuple):
        text = ", ".join(_short(item) for item in value) or "none"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def summary(event: Any) -> list[tuple[str, str]]:
    """Return an event's scopes and details as short `key: value` pairs, the why first."""
    pairs: list[tuple[str, str]] = []
    details: dict[str, Any] = dict(event.details or {})
    for key in WHY_KEYS:
        if key in details:
            pairs.append((key, _short(details.pop(key))))
    if event.scopes:
        pairs.append(("scopes", _short(list(event.scopes))))
    for key, value in details.items():
        if isinstance(value, dict):
            pairs.extend((f"{key}.{inner}", _short(v)) for inner, v in value.items())
        else:
            pairs.append((str(key), _short(value)))
    return pairs


def full_json(event: Any) -> str:
    """Return everything an event records beyond its columns, as indented JSON."""
    return json.dumps(
        {"scopes": list(event.scopes or []), "details": event.details or {},
         "request_id": event.request_id, "id": str(event.id), "chain_seq": event.chain_seq},
        indent=2, sort_keys=True, default=str,
    )


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
        outcomes=audit.OUTCOMES, worker=worker, summary=summary, full_json=full_json,
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
