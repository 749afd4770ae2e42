"""Every refusal the broker gives, as an exception carrying a stable `error` code."""

from __future__ import annotations

from typing import Any, ClassVar

from flask import Response, jsonify
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class BrokerError(Exception):
    """A refusal: `error` code, human `description`, HTTP status, extra fields and headers."""

    error: ClassVar[str] = "server_error"
    status_code: ClassVar[int] = 500
    default_description: ClassVar[str] = "The broker could not handle this request."

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extras: Any,
    ) -> None:
        self.description = description or self.default_description
        super().__init__(self.description)
        self.extras = extras
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """Return the JSON body of this refusal."""
        return {"error": self.error, "error_description": self.description, **self.extras}


class InvalidRequest(BrokerError):
    error, status_code = "invalid_request", 400
    default_description = "The request is malformed."


class UnsupportedGrantType(BrokerError):
    error, status_code = "unsupported_grant_type", 400
    default_description = "This grant type is not supported here."


class InvalidTarget(BrokerError):
    error, status_code = "invalid_target", 400
    default_description = "The resource or audience asked for is not this broker's."


class InvalidClient(BrokerError):
    error, status_code = "invalid_client", 401
    default_description = "Client authentication failed."


class IpNotAllowed(BrokerError):
    error, status_code = "ip_not_allowed", 403
    default_description = "Requests from this address are not allowed."


class RateLimited(BrokerError):
    error, status_code = "rate_limited", 429
    default_description = "Too many requests; retry later."


class ScopeNotAllowed(BrokerError):
    error, status_code = "scope_not_allowed", 403
    default_description = "This client may not ask for these scopes."


class UnknownUser(BrokerError):
    error, status_code = "unknown_user", 404
    default_description = "No such user in this tenant."


class UserSuspended(BrokerError):
    error, status_code = "user_suspended", 403
    default_description = "The user is suspended."


class LoginRequired(BrokerError):
    error, status_code = "login_required", 403
    default_description = "The user has not signed in recently enough."


class NotConnected(BrokerError):
    error, status_code = "not_connected", 404
    default_description = "The user has not connected Gmail."


class ReauthRequired(BrokerError):
    error, status_code = "reauth_required", 409
    default_description = "The user must connect Gmail again."


class ScopeNotGranted(BrokerError):
    error, status_code = "scope_not_granted", 409
    default_description = "The user has not granted these scopes."


class UpstreamUnavailable(BrokerError):
    error, status_code = "upstream_unavailable", 503
    default_description = "Google could not be reached in time; retry later."


class BrokerMisconfigured(BrokerError):
    error, status_code = "broker_misconfigured", 503
    default_description = "Google rejected the broker's own OAuth client."


class DatabaseUnavailable(BrokerError):
    error, status_code = "database_unavailable", 503
    default_description = "The database is unavailable; retry later."


class KeyServiceUnavailable(BrokerError):
    error, status_code = "key_service_unavailable", 503
    default_description = "The key service holding the master key did not answer; retry later."


class NotFound(BrokerError):
    error, status_code = "not_found", 404
    default_description = "Nothing here."


class MethodNotAllowed(BrokerError):
    error, status_code = "method_not_allowed", 405
    default_description = "This method is not allowed here."


class GmailMethodNotAllowed(BrokerError):
    error, status_code = "method_not_allowed", 403
    default_description = "This client may not call this Gmail method."


class UserMismatch(BrokerError):
    error, status_code = "user_mismatch", 403
    default_description = "The path names another user than the proxy token's."


class InvalidToken(BrokerError):
    error, status_code = "invalid_token", 401
    default_description = "The proxy token is invalid or expired; get a new one."


class Forbidden(BrokerError):
    error, status_code = "forbidden", 403
    default_description = "Not allowed."


class Conflict(BrokerError):
    error, status_code = "conflict", 409
    default_description = "This conflicts with the current state."


class PayloadTooLarge(BrokerError):
    error, status_code = "payload_too_large", 413
    default_description = "The request body is too large."


class UnsupportedMediaType(BrokerError):
    error, status_code = "unsupported_media_type", 415
    default_description = "The request body must be JSON."


class ServerError(BrokerError):
    error, status_code = "server_error", 500
    default_description = "Internal error; quote the request id when reporting it."


def error_response(exc: BrokerError) -> Response:
    """Render a refusal as JSON with its status and headers (every surface's API answer)."""
    response = jsonify(exc.body())
    response.status_code = exc.status_code
    response.headers.update(exc.headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def database_down(exc: BaseException) -> bool:
    """Say whether an error means the database cannot be reached (retry later), not a bug."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)
