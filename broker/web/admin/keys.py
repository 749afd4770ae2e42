"""Admin page /admin/keys: the tenant's data key versions; rotate the tenant key."""

from __future__ import annotations

from flask import Blueprint, render_template
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.keys import get_keys
from broker.tenancy import key_rotation
from broker.web import guard
from broker.web.admin import access
from broker.web.admin.worker_status import worker_seen

bp = Blueprint("keys", __name__, url_prefix="/keys")


@bp.get("")
def index() -> str:
    """List data key versions with their dates and seal counts."""
    with get_db().transaction(write=False) as session:
        rows = key_rotation.list_keys(session, access.tenant_id())
        worker = worker_seen(session, guard.now())
    return render_template("admin/keys.html", keys=rows, worker=worker)


@bp.post("/rotate")
def rotate() -> Response:
    """Make a new data key for new writes; the worker re-seals older rows."""
    with get_db().transaction() as session:
        version = key_rotation.rotate(
            session, get_keys(), access.tenant_id(), actor=access.actor(), ip=access.ip()
        )
    return access.done(
        f"Data key version {version} now seals new values; the worker re-seals older ones.",
        "admin.keys.index",
    )
