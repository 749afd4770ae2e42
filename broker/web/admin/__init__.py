"""Blueprint /admin: a tenant admin's pages, one sub-blueprint per concern."""

from __future__ import annotations

from flask import Blueprint, Flask, redirect, render_template, url_for
from werkzeug.wrappers import Response

from broker.errors import BrokerError
from broker.web.admin import (
    access,
    audit,
    certificates,
    clients,
    connections,
    keys,
    overview,
    policy,
    users,
    webhooks,
    workload,
)
from broker.web.errors import broker_error_page

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.before_request(access.require_admin)
bp.register_error_handler(BrokerError, broker_error_page)
for _module in (overview, policy, clients, users, connections, webhooks, audit, keys,
                certificates, workload):
    bp.register_blueprint(_module.bp)


@bp.get("")
def index() -> Response:
    """Open the overview: the tenant at a glance."""
    return redirect(url_for("admin.overview.index"))


@bp.get("/admin.css")
def stylesheet() -> Response:
    """Serve the admin pages' styles (a template: it ships with the others in the wheel)."""
    response = Response(render_template("admin/admin.css"), mimetype="text/css")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def init_app(app: Flask) -> None:
    """Register the admin pages."""
    app.register_blueprint(bp)
