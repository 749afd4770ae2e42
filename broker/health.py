"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from broker.db import get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer while the process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer 200 when the database answers, 503 with a reason otherwise."""
    try:
        get_db().ping()
    except SQLAlchemyError:
        return jsonify(status="unavailable", reason="database_unreachable"), 503
    return jsonify(status="ok"), 200


def init_app(app: Flask) -> None:
    """Register the probes."""
    app.register_blueprint(bp)
