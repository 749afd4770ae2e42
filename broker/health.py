"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from broker.db import get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer while the process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer 200 when the database answers, 503 with a reason otherwise; say if Google is set."""
    try:
        get_db().ping()
    except SQLAlchemyError:
        return jsonify(status="unavailable", reason="database_unreachable"), 503
    # Still ready without Google: the API and the admin pages serve; only sign-in cannot.
    configured = current_app.config["BROKER"].google_configured
    return jsonify(status="ok", google="configured" if configured else "not_configured"), 200


def init_app(app: Flask) -> None:
    """Register the probes."""
    app.register_blueprint(bp)
