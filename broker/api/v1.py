"""bp /api/v1: POST /token and GET /connections for backend jobs."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from broker import metrics
from broker.api import json_errors
from broker.api.auth import authenticate
from broker.clientip import client_ip
from broker.clock import get_clock
from broker.connections import tenant_connections
from broker.db import get_db
from broker.errors import (
    BrokerError,
    InvalidClient,
    InvalidRequest,
    InvalidToken,
    RateLimited,
    UnsupportedMediaType,
)
from broker.limits import get_limits
from broker.tenancy import ClientInfo
from broker.tokens import Handout, TokenRequest

bp = json_errors(Blueprint("api_v1", __name__, url_prefix="/api/v1"))
log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_MIN_TTL = 3000
STATUSES = ("active", "degraded", "needs_reauth", "revoked")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
TOKEN_FIELDS = {"user", "scopes", "min_ttl", "rejected_token", "client_id",
                "client_assertion_type", "client_assertion"}


def admit(
    action: str = "token.handout",
    authenticator: Callable[[], tuple[ClientInfo, dict[str, str]]] | None = None,
    environ: Mapping[str, Any] | None = None,
) -> Handout:
    """Authenticate the client, check its IP, then count it against its rate limit.

    Authentication comes first and only failures count against the per-address limit, so
    failing callers behind a shared address cannot lock out the good ones (issue 11 item 5).
    `environ` is the request's when it is served outside Flask's request context (the lane).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ip = client_ip(request.environ if environ is None else environ,
                   app.config["BROKER"].TRUSTED_PROXIES)
    limits = get_limits(app)
    try:
        client, credential = (authenticator or (
            lambda: authenticate(request, get_clock(app)())))()
    except (InvalidClient, InvalidToken) as failed:
        metrics.AUTH_FAILURES.inc()
        refusal: BrokerError = failed
        try:
            limits.auth_failed(str(ip))
        except RateLimited as limited:
            metrics.RATE_LIMITED.labels(kind="auth_failures").inc()
            refusal = limited
        log.warning("api auth refused: %s", refusal.error, extra={"event": "api_auth",
                    "outcome": refusal.error})
        raise refusal from None
    handout = Handout(app, client, ip, credential=credential, action=action)
    handout.check_ip()
    try:
        limits.hit_client(client.id)
    except RateLimited:
        metrics.RATE_LIMITED.labels(kind="api").inc()
        log.warning("rate limited", extra={"event": "rate_limited", "client_id": client.id})
        raise
    return handout


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise InvalidRequest("duplicate keys in the JSON body")
    return dict(pairs)


def _strings(value: Any) -> list[str]:
    """Return every string in a parsed JSON value, keys included (the body is shallow)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> bool:
    """Say whether a string has no control characters and encodes as UTF-8 (no lone surrogates)."""
    if _CONTROL.search(text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_token_request(client_id: str) -> TokenRequest:
    """Parse the request's JSON body strictly (see parse_token_body)."""
    if not request.is_json:
        raise UnsupportedMediaType()
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    return parse_token_body(request.get_data(cache=False), client_id)


def parse_token_body(raw: bytes, client_id: str) -> TokenRequest:
    """Parse a JSON body strictly: known fields, types and sizes (and the client it names)."""
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if not all(_clean(v) for v in _strings(body)):
        raise InvalidRequest("strings must be valid text without control characters")
    unknown = sorted(set(body) - TOKEN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)[:200]}")
    named = body.get("client_id", client_id)
    if not isinstance(named, str) or not hmac.compare_digest(named.encode(), client_id.encode()):
        raise InvalidRequest("client_id names another client than the one authenticated")
    user = body.get("user")
    if not isinstance(user, str) or not 1 <= len(user) <= 320:
        raise InvalidRequest("user must be an email address or user id")
    scopes = body.get("scopes")
    if scopes is not None and (
        not isinstance(scopes, list) or not 1 <= len(scopes) <= 20
        or not all(isinstance(s, str) and 0 < len(s) <= 200 for s in scopes)
    ):
        raise InvalidRequest("scopes must be a list of 1-20 scope names")
    min_ttl = body.get("min_ttl", 300)
    if isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or not 0 <= min_ttl <= 3000:
        raise InvalidRequest(f"min_ttl must be a whole number of seconds, 0-{MAX_MIN_TTL}")
    rejected = body.get("rejected_token")
    if rejected is not None and (not isinstance(rejected, str) or not 0 < len(rejected) <= 2048):
        raise InvalidRequest("rejected_token must be an access token (at most 2048 bytes)")
    return TokenRequest(user=user, scopes=scopes, min_ttl=min_ttl, rejected_token=rejected)


def rfc3339(moment: Any) -> str:
    """Return a UTC datetime as RFC 3339 with Z, to the second."""
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


@bp.post("/token")
def token() -> Response:
    """Hand out an access token, or refuse precisely."""
    with metrics.FETCH_SECONDS.time():
        body = hand_out()
    # Built directly, not by jsonify: every hand-out pays for Flask's JSON provider otherwise.
    return current_app.response_class(body, mimetype="application/json", headers=NO_STORE)


def hand_out(
    environ: Mapping[str, Any] | None = None, raw: bytes | None = None,
    authenticator: Callable[[], tuple[ClientInfo, dict[str, str]]] | None = None,
) -> str:
    """Admit the client, read its request, hand out the token: return the answer's JSON.

    Flask's view passes nothing (the request is Flask's); the lane passes the environ, the
    body it read and how it authenticates the client.
    """
    handout = admit(authenticator=authenticator, environ=environ)
    try:
        if raw is None:
            req = parse_token_request(handout.client.id)
        else:
            req = parse_token_body(raw, handout.client.id)
    except BrokerError as exc:
        handout.refuse(exc)
    result = handout.run(req)
    # Measured now, not when the request began: a refresh in between would overstate it.
    now = get_clock(current_app)()
    expires_in = int((result.token.expires_at - now).total_seconds())
    return json.dumps({
        "access_token": result.token.access_token,
        "token_type": "Bearer",
        "expires_at": rfc3339(result.token.expires_at), "expires_in": max(0, expires_in),
        "scopes": result.token.scopes,
        "user": {"id": str(result.user_id), "email": result.email},
    }, separators=(",", ":")) + "\n"  # as jsonify writes it


def _encode_cursor(last: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last.bytes).decode().rstrip("=")


def _decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not one this API returned") from None


def _query_args() -> tuple[str | None, uuid.UUID | None, int]:
    allowed = {"status", "cursor", "limit", "client_id"}
    for name in request.args:
        if name not in allowed:
            raise InvalidRequest(f"unknown parameter {name[:40]!r}")
        if len(request.args.getlist(name)) > 1:
            raise InvalidRequest(f"parameter {name!r} given twice")
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    cursor = request.args.get("cursor")
    limit_text = request.args.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= 500:
        raise InvalidRequest("limit must be 1-500")
    return status, _decode_cursor(cursor) if cursor else None, int(limit_text)


@bp.get("/connections")
def connections() -> Response:
    """List the tenant's connections (no tokens), paginated by an opaque cursor."""
    handout = admit()
    try:
        status, after, limit = _query_args()
    except BrokerError as exc:
        handout.refuse(exc)
    with get_db().transaction(write=False) as session:
        page, more = tenant_connections(
            session, handout.client.tenant_id, status=status, after=after, limit=limit
        )
    body = {
        "connections": [
            {
                "id": str(conn.id), "user": {"id": str(conn.user_id), "email": email},
                "status": conn.status, "status_reason": conn.status_reason,
                # What jobs may use: scopes the user withholds are not theirs to ask for.
                "granted_scopes": sorted(set(conn.granted_scopes) - set(conn.withheld_scopes)),
                "last_refresh_at": rfc3339(conn.last_refresh_at) if conn.last_refresh_at
                else None,
                "last_used_at": rfc3339(conn.last_used_at) if conn.last_used_at else None,
            }
            for conn, email in page
        ],
        "next_cursor": _encode_cursor(page[-1][0].id) if more else None,
    }
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response
