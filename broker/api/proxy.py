"""bp /proxy/…: Gmail's REST surface through the broker, and POST /api/v1/proxy/token.

A job authenticates with a proxy token (Bearer, from the endpoint below) or with its client
credentials and the user named in the path; either way every call passes the hand-out's checks
and the client's method allowlist, and the Google token never leaves the broker.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import PathConverter
from werkzeug.wrappers import Response as WerkzeugResponse

from broker.api import json_errors
from broker.api.v1 import MAX_BODY as MAX_JSON
from broker.api.v1 import admit, rfc3339
from broker.clock import get_clock
from broker.errors import BrokerError, InvalidRequest, InvalidToken, UnsupportedMediaType
from broker.proxy import (
    CHUNK,
    MAX_BODY,
    REPLAY_MAX,
    Proxy,
    ProxyGrant,
    Turn,
    get_proxy,
    raw_path,
    resolve,
)
from broker.tenancy import ClientInfo, client_auth
from broker.tokens import Handout, TokenRequest

bp = json_errors(Blueprint("proxy", __name__))
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
BEARER_CHALLENGE = 'Bearer realm="broker-proxy", error="invalid_token"'
TOKEN_FIELDS = {"user", "ttl", "client_id", "client_assertion_type", "client_assertion"}


def _bearer() -> ProxyGrant | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return get_proxy(app).tokens.open(header[7:].strip(), get_clock(app)())
    except InvalidToken as refused:
        refused.headers["WWW-Authenticate"] = BEARER_CHALLENGE
        raise


def _admit() -> tuple[Handout, ProxyGrant | None]:
    """Authenticate by proxy token, else by client credentials; check IP and rate limit."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if request.headers.get("Authorization", "")[:7].lower() != "bearer ":
        return admit("proxy.call"), None
    grant: list[ProxyGrant] = []

    def by_token() -> tuple[ClientInfo, dict[str, str]]:
        found = _bearer()
        assert found is not None  # noqa: S101 - the header was checked above
        grant.append(found)
        try:
            return client_auth.verify_grant(app, found.client_id, found.tenant_id), {
                "credential": "proxy_token"}
        except InvalidToken as refused:
            refused.headers["WWW-Authenticate"] = BEARER_CHALLENGE
            raise

    return admit("proxy.call", by_token), grant[0]


class AnyPath(PathConverter):
    """Everything after /proxy/, control characters too, so the egress check sees and refuses
    them with its own answer rather than the router's 404."""

    regex = r"[\s\S]*?"
    part_isolating = False  # it spans slashes (werkzeug guesses from a literal / in regex)


@bp.record_once
def _converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters["anypath"] = AnyPath


@bp.route("/proxy/<anypath:rest>", methods=METHODS, merge_slashes=False, strict_slashes=False)
# google-api-python-client sends media uploads to `/upload/…` on the api_endpoint's host,
# keeping the discovery path rather than the endpoint's: the proxy answers there too.
@bp.route("/upload/gmail/<anypath:rest>", methods=METHODS, merge_slashes=False,
          strict_slashes=False)
def proxied(rest: str) -> WerkzeugResponse:
    """Forward one Gmail call under the client's policy; never the Google token."""
    proxy = get_proxy(current_app._get_current_object())  # type: ignore[attr-defined]
    turn = proxy.turn()
    turn.take()  # given back when the call leaves for Gmail (or here, if it never does)
    try:
        return _proxied(proxy, turn)
    finally:
        turn.give()


def _proxied(proxy: Proxy, turn: Turn) -> WerkzeugResponse:
    handout, grant = _admit()
    raw = raw_path(request.environ)
    if raw.startswith("/upload/"):
        raw = "/proxy" + raw
    try:
        egress = resolve(proxy.table, request.method, raw, request.query_string)
    except BrokerError as exc:
        handout.details = {"method": "-"}
        handout.refuse(exc)
    request.max_content_length = MAX_BODY
    length = request.content_length
    body: bytes | Callable[[], Iterator[bytes]]
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if length is None and not chunked:
        body = b""  # no body (a GET): nothing to stream, and the call can be sent again
    elif length is not None and length <= REPLAY_MAX:
        body = request.get_data(cache=False)
    else:
        stream = request.stream

        def chunks() -> Iterator[bytes]:
            return iter(lambda: stream.read(CHUNK), b"")

        body = chunks
    return proxy.forward(handout, egress, grant, list(request.headers.items()), body, length,
                         turn)


@bp.post("/api/v1/proxy/token")
def proxy_token() -> Response:
    """Issue a short-lived proxy token for one user, under the hand-out's checks."""
    handout = admit("proxy.token")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.config["BROKER"]
    try:
        user, ttl = _token_body(handout.client.id, settings.PROXY_TOKEN_TTL)
    except BrokerError as exc:
        handout.refuse(exc)
    token, grant = issue_proxy_token(handout, user, ttl)
    user_id, email, expires_at = grant.user_id, grant.email, grant.expires_at
    response = jsonify(
        proxy_token=token, token_type="Bearer",  # noqa: S106 - a token type, not a secret
        expires_in=ttl, expires_at=rfc3339(expires_at),
        proxy_url=settings.PUBLIC_URL.rstrip("/") + "/proxy/",
        user={"id": str(user_id), "email": email},
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def issue_proxy_token(handout: Handout, user: str, ttl: int) -> tuple[str, ProxyGrant]:
    """Run the hand-out's checks for `user` (audited as proxy.token), then mint a proxy token."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    handout.action = "proxy.token"
    handout.details = {**handout.details, "ttl": ttl}
    user_id, email = handout.check(TokenRequest(user=user, scopes=None, min_ttl=0,
                                                rejected_token=None))
    grant = ProxyGrant(handout.client.id, handout.client.tenant_id, user_id, email,
                       get_clock(app)() + dt.timedelta(seconds=ttl))
    return get_proxy(app).tokens.issue(grant), grant


def _token_body(client_id: str, max_ttl: int) -> tuple[str, int]:
    if not request.is_json:
        raise UnsupportedMediaType()
    if (request.content_length or 0) > MAX_JSON:
        raise InvalidRequest("the body is too large")
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - TOKEN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)[:200]}")
    named = body.get("client_id", client_id)
    if named != client_id:
        raise InvalidRequest("client_id names another client than the one authenticated")
    user = body.get("user")
    if not isinstance(user, str) or not 1 <= len(user) <= 320 or not user.isprintable():
        raise InvalidRequest("user must be an email address or user id")
    ttl = body.get("ttl", max_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= max_ttl:
        raise InvalidRequest(f"ttl must be a whole number of seconds, 60-{max_ttl}")
    return user, ttl

