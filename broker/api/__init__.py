"""The JSON API: BrokerError -> {"error", "error_description"}; JSON for every /api/ error."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Request, Response, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import RequestRedirect

from broker import errors
from broker.errors import database_down, error_response
from broker.keys import KeyServiceError

log = logging.getLogger(__name__)
# Seconds a caller waits before asking again while the HSM or KMS is unreachable.
KEY_SERVICE_RETRY_AFTER = "5"
_BY_STATUS: dict[int, type[errors.BrokerError]] = {
    400: errors.InvalidRequest, 404: errors.NotFound, 405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge, 415: errors.UnsupportedMediaType,
}


def http_error(exc: HTTPException) -> Response:
    """Render a werkzeug HTTP error on an API path as JSON."""
    if isinstance(exc, RequestRedirect):
        # werkzeug redirects `//` to `/`; an API caller should fix its URL, not follow a 308.
        return error_response(errors.NotFound())
    kind = _BY_STATUS.get(exc.code or 500, errors.ServerError)
    headers = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    if isinstance(exc, RequestEntityTooLarge):
        kind = errors.PayloadTooLarge
    return error_response(kind(headers=headers))


def unexpected(exc: Exception) -> Response:
    """Answer any unexpected failure with a generic error and no traceback."""
    if isinstance(exc, HTTPException):
        return http_error(exc)
    if isinstance(exc, KeyServiceError):
        # Served from cached data keys keeps working; only new unwraps land here (issue 17).
        log.warning("key service unavailable: %s", exc, extra={"event": "key_service",
                    "provider": exc.provider})
        return error_response(
            errors.KeyServiceUnavailable(headers={"Retry-After": KEY_SERVICE_RETRY_AFTER})
        )
    if database_down(exc):
        log.warning("database unavailable: %s", type(exc).__name__)
        return error_response(errors.DatabaseUnavailable(headers={"Retry-After": "1"}))
    log.error("unexpected %s", type(exc).__name__, exc_info=exc)
    return error_response(errors.ServerError())


def _api_routing_errors() -> Response | None:
    # Unmatched /api/ and /risc/ paths never reach a blueprint handler: answer them here, as JSON.
    routing = request.routing_exception
    if routing is not None and request.path.startswith(("/api/", "/risc/", "/proxy/",
                                                        "/upload/")):
        if isinstance(routing, HTTPException):
            return http_error(routing)
    return None


def json_errors(blueprint: Blueprint) -> Blueprint:
    """Make a blueprint answer every error, expected or not, as JSON."""
    blueprint.register_error_handler(errors.BrokerError, error_response)
    blueprint.register_error_handler(Exception, unexpected)
    return blueprint


class PagesOnlySessions(SecureCookieSessionInterface):
    """Skip Flask's cookie session on the API: only pages flash messages through it."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """Open the cookie session, except on /api/ paths (a null session there)."""
        if request.path.startswith(("/api/", "/proxy/", "/upload/")):
            return None
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    """Register the API blueprints, their services and the JSON error handlers."""
    app.session_interface = PagesOnlySessions()
    from broker import limits
    from broker.api import exchange, metadata, openapi, proxy, risc, v1
    from broker.tenancy import certificates, client_auth

    limits.init_app(app)
    client_auth.init_app(app)
    certificates.init_app(app)
    app.register_error_handler(errors.BrokerError, error_response)
    for blueprint in (v1.bp, exchange.bp, openapi.bp, metadata.bp, risc.bp, proxy.bp):
        app.register_blueprint(blueprint)
    app.before_request(_api_routing_errors)
    from broker.api import lane

    lane.init_app(app)
