"""The JSON API surface: BrokerError -> {"error", "error_description"}."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from broker.errors import BrokerError


def error_response(exc: BrokerError) -> Response:
    """Render a refusal as JSON with its status and headers."""
    response = jsonify(exc.body())
    response.status_code = exc.status_code
    response.headers.update(exc.headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the API blueprints and the JSON error handler."""
    app.register_error_handler(BrokerError, error_response)
