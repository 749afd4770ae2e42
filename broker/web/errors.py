"""HTML error pages for people, JSON for the API, and the audited refusal page."""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Response

from broker import audit, errors
from broker.db import get_db
from broker.errors import database_down, error_response
from broker.identity import Refusal
from broker.keys import KeyServiceError
from broker.web import guard

log = logging.getLogger(__name__)

PAGES = {
    400: ("Bad request", "The request could not be understood."),
    403: ("Not allowed", "You may not do this."),
    404: ("Page not found", "There is nothing at this address."),
    405: ("Method not allowed", "This page does not accept that kind of request."),
    413: ("Request too large", "The request body is too large."),
    500: ("Something went wrong", "The broker hit an unexpected error. It has been logged."),
}
API_ERRORS: dict[int, type[errors.BrokerError]] = {
    400: errors.InvalidRequest,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    500: errors.ServerError,
}
JSON_PATHS = ("/api/", "/healthz", "/readyz", "/metrics", "/proxy/", "/upload/")
# Seconds a caller waits before asking again while the database is unreachable (a failover).
DATABASE_RETRY_AFTER = "1"


def _page(status: int, title: str, text: str, *, reason: str | None = None,
          names: list[str] | None = None) -> Response:
    body = render_template("error.html", status=status, title=title, text=text, reason=reason,
                           names=names or [])
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def http_error(exc: HTTPException) -> Response:
    """Render an HTTP error as a page, or as the API's JSON under /api/."""
    status = exc.code or 500
    response: Response
    if request.path.startswith(JSON_PATHS):
        error_cls = API_ERRORS.get(status, errors.ServerError)
        response = error_response(error_cls())
        response.status_code = status
    else:
        title, text = PAGES.get(status, (exc.name, "The request could not be handled."))
        response = _page(status, title, text)
    allowed = getattr(exc, "valid_methods", None)
    if status == 405 and allowed:
        response.headers["Allow"] = ", ".join(sorted(allowed))
    return response


def server_error(exc: InternalServerError) -> Response:
    """Answer an unexpected failure without details; the request id ties it to the logs."""
    original = getattr(exc, "original_exception", None)
    if original is not None and database_down(original):
        return database_unavailable(original)
    if original is not None:
        log.error("unhandled error: %s", type(original).__name__, exc_info=original)
    return http_error(exc)


def database_unavailable(exc: BaseException) -> Response:
    """Answer while the database cannot be reached (a failover, a restart): 503, retry soon."""
    log.warning("database unavailable: %s", type(exc).__name__,
                extra={"event": "database_unavailable"})
    unavailable = errors.DatabaseUnavailable(headers={"Retry-After": DATABASE_RETRY_AFTER})
    if request.path.startswith(JSON_PATHS):
        return error_response(unavailable)
    guard.render_anonymously()  # the page's header must not ask the database who is signed in
    response = _page(503, "Temporarily unavailable",
                     "The broker cannot reach its database right now. Try again in a moment.",
                     reason=unavailable.error)
    response.headers["Retry-After"] = DATABASE_RETRY_AFTER
    return response


def database_error(exc: SQLAlchemyError) -> Response:
    """Answer a database failure: 503 when the database is unreachable, else the 500 path."""
    if database_down(exc):
        return database_unavailable(exc)
    raise exc  # a bug, not an outage: Flask's unhandled path logs it and answers 500


def broker_error_page(exc: errors.BrokerError) -> Response:
    """Render a BrokerError raised by a page view as a page."""
    return _page(exc.status_code, PAGES.get(exc.status_code, ("Refused", ""))[0],
                 exc.description, reason=exc.error)


def key_service_page(exc: KeyServiceError) -> Response:
    """Answer a page whose data key could not be unwrapped: 503, try again shortly."""
    log.warning("key service unavailable: %s", exc, extra={"event": "key_service",
                "provider": exc.provider})
    response = broker_error_page(errors.KeyServiceUnavailable())
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def audit_refusal(refusal: Refusal) -> None:
    """Record a refused browser flow in the audit log and the log."""
    if refusal.action:
        try:
            with get_db().transaction() as session:
                audit.record(
                    session, action=refusal.action, tenant_id=refusal.tenant_id,
                    actor_type="user", actor_id=str(refusal.user_id) if refusal.user_id else None,
                    subject_user_id=refusal.user_id, outcome="denied", reason=refusal.reason,
                    ip=str(guard.ip()), details=refusal.details,
                )
        except SQLAlchemyError:
            log.exception("could not audit a refusal (%s)", refusal.reason)
    log.info("refused: %s", refusal.reason, extra={"outcome": "denied", "reason": refusal.reason})


def _cancelled_page(refusal: Refusal) -> Response:
    # Cancelling at Google is a choice, not a failure: a calm page, and the way back.
    connecting = request.endpoint == "connections.callback"
    body = render_template("cancelled.html", connecting=connecting, reason=refusal.reason)
    response = Response(body, status=200, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def refusal_page(refusal: Refusal) -> Response:
    """Audit a refused browser flow and explain it on a page."""
    audit_refusal(refusal)
    if refusal.reason == "access_denied":
        response = _cancelled_page(refusal)
    else:
        names = refusal.details.get("not_offered")
        response = _page(refusal.status_code, refusal.title, refusal.explanation,
                         reason=refusal.reason, names=names if isinstance(names, list) else None)
    if request.endpoint == "auth.callback" and not guard.current().valid:
        guard.clear_session_cookie(response)
    return response


def init_app(app: Flask) -> None:
    """Register the error pages."""
    for status in PAGES:
        app.register_error_handler(status, http_error)
    app.register_error_handler(InternalServerError, server_error)
    app.register_error_handler(Refusal, refusal_page)
    app.register_error_handler(KeyServiceError, key_service_page)
    app.register_error_handler(SQLAlchemyError, database_error)
