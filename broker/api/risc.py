"""bp /risc: the receiver Google pushes security event tokens to (RFC 8935)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from broker import errors, metrics, risc
from broker.api import json_errors
from broker.clientip import client_ip
from broker.errors import RateLimited
from broker.limits import get_limits

bp = json_errors(Blueprint("risc", __name__, url_prefix="/risc"))


def _answer(status: int, body: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body) if body else "", status=status,
                        mimetype="application/json" if body else None)
    response.headers["Cache-Control"] = "no-store"
    if status == 503:
        response.headers["Retry-After"] = "30"
    return response


@bp.post("/events")
def events() -> Response:
    """Take one SET, whatever its content type; its signature is its only authentication."""
    if not current_app.config["BROKER"].RISC:
        raise errors.NotFound()
    try:
        ip = client_ip(request, current_app.config["BROKER"].TRUSTED_PROXIES)
        get_limits().hit_risc(str(ip))
    except RateLimited:
        metrics.RATE_LIMITED.labels(kind="risc").inc()
        raise
    if (request.content_length or 0) > risc.MAX_BODY:
        return _answer(400, {"err": "invalid_request", "description": "the body exceeds 64 KiB"})
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return _answer(400, {"err": "invalid_request", "description": "the body exceeds 64 KiB"})
    receipt = risc.receive(current_app._get_current_object(), body)  # type: ignore[attr-defined]
    return _answer(receipt.status, receipt.body or None)


# The signature authenticates the POST; there is no browser session for a CSRF token to bind.
events.csrf_exempt = True  # type: ignore[attr-defined]
