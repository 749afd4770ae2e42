"""bp /api/v1/oauth: POST /token, the token exchange (RFC 8693) for jobs without secrets.

A job presents the identity its platform signed (a Kubernetes service account token, a GitHub
Actions OIDC token); the trust rule it satisfies names the API client whose scopes, IP ranges,
rate limit and audit then apply, and the hand-out is the very one of POST /api/v1/token.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from broker import metrics
from broker.api import json_errors
from broker.api.auth import authenticate
from broker.api.proxy import issue_proxy_token
from broker.clientip import client_ip
from broker.clock import get_clock
from broker.db import get_db
from broker.errors import (
    Forbidden,
    InvalidClient,
    InvalidRequest,
    InvalidTarget,
    RateLimited,
    UnsupportedGrantType,
    UnsupportedMediaType,
)
from broker.limits import get_limits
from broker.tenancy import ClientInfo, client_auth
from broker.tokens import Handout, TokenRequest
from broker.workload import REJECTED, TOKEN_TYPES, Match, admit_subject, trusts

bp = json_errors(Blueprint("api_exchange", __name__, url_prefix="/api/v1/oauth"))

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type name
PROXY_TOKEN = "urn:broker:token-type:proxy"  # noqa: S105 - a type name
GMAIL_RESOURCE = "https://gmail.googleapis.com/"
MAX_MIN_TTL = 3000
MAX_BODY = 32 * 1024  # a subject token and an assertion of 8 KiB each, form-encoded
FIELDS = {"grant_type", "subject_token", "subject_token_type", "requested_token_type", "scope",
          "login_hint", "resource", "audience", "min_ttl", "actor_token", "actor_token_type",
          "client_id", "client_assertion_type", "client_assertion"}


@dataclass(frozen=True)
class ExchangeRequest:
    """A parsed, size-checked exchange request (the subject token not yet validated)."""

    subject_token: str
    requested_token_type: str
    scopes: list[str] | None
    login_hint: str
    min_ttl: int


def _single(name: str) -> str | None:
    values = request.form.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"parameter {name!r} given twice")
    return values[0] if values else None


def parse_exchange() -> ExchangeRequest:
    """Parse the form strictly: RFC 8693's parameters, our `login_hint` and `min_ttl`."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The body must be form-encoded "
                                   "(application/x-www-form-urlencoded).")
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    for name in list(request.form) + list(request.args):
        if name not in FIELDS or name in request.args:
            raise InvalidRequest(f"unknown parameter {name[:40]!r}")
    grant_type = _single("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType(f"grant_type must be {GRANT_TYPE}")
    if _single("actor_token") is not None or _single("actor_token_type") is not None:
        raise InvalidRequest("actor tokens are not accepted (no delegation)")
    token = _single("subject_token")
    if not token or len(token) > 8192:
        raise InvalidRequest("subject_token is required (a JWT of at most 8 KiB)")
    if _single("subject_token_type") not in TOKEN_TYPES:
        raise InvalidRequest("subject_token_type must be urn:ietf:params:oauth:token-type:jwt "
                             "or …:id_token")
    requested = _single("requested_token_type") or ACCESS_TOKEN
    if requested not in (ACCESS_TOKEN, PROXY_TOKEN):
        raise InvalidRequest(f"requested_token_type must be {ACCESS_TOKEN} or {PROXY_TOKEN}")
    resource = _single("resource")
    if resource is not None and resource != GMAIL_RESOURCE:
        raise InvalidTarget(f"resource may only be {GMAIL_RESOURCE}")
    audience = _single("audience")
    identifier = str(current_app.config["BROKER"].PUBLIC_URL).rstrip("/")
    if audience is not None and audience.rstrip("/") != identifier:
        raise InvalidTarget("audience may only be this broker's identifier (its public URL)")
    hint = _single("login_hint")
    if not hint or len(hint) > 320:
        raise InvalidRequest("login_hint must be the user's email address or user id")
    scope = _single("scope")
    scopes = scope.split() if scope is not None else None
    if scopes is not None and (not 1 <= len(scopes) <= 20 or any(len(s) > 200 for s in scopes)):
        raise InvalidRequest("scope must name 1-20 scopes, separated by spaces")
    ttl = _single("min_ttl") or "300"
    if not (ttl.isascii() and ttl.isdigit()) or not 0 <= int(ttl) <= MAX_MIN_TTL:
        raise InvalidRequest(f"min_ttl must be a whole number of seconds, 0-{MAX_MIN_TTL}")
    return ExchangeRequest(token, requested, scopes, hint, int(ttl))


def _authenticated(app: Flask, ip: str) -> tuple[ClientInfo | None, dict[str, str]]:
    """Return the client the request also authenticates as, if it tries (optional here)."""
    if not (request.headers.get("Authorization") or "client_assertion" in request.form
            or "client_assertion_type" in request.form):
        return None, {}
    try:
        return authenticate(request, get_clock(app)())
    except InvalidClient:
        metrics.AUTH_FAILURES.inc()
        _count_failure(ip)
        raise


def _count_failure(ip: str) -> None:
    try:
        get_limits().auth_failed(ip)
    except RateLimited:
        metrics.RATE_LIMITED.labels(kind="auth_failures").inc()
        raise


def proxy_token(handout: Handout, req: ExchangeRequest, match: Match) -> Response:
    """Answer a proxy token (Gmail through the broker) after the rule's checks passed."""
    settings = current_app.config["BROKER"]
    token, grant = issue_proxy_token(handout, req.login_hint, settings.PROXY_TOKEN_TTL)
    response = jsonify(
        access_token=token, issued_token_type=PROXY_TOKEN,
        token_type="Bearer",  # noqa: S106 - a token type, not a secret
        expires_in=settings.PROXY_TOKEN_TTL, scope=" ".join(handout.scopes),
        proxy_url=settings.PUBLIC_URL.rstrip("/") + "/proxy/",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/token")
def token() -> Response:
    """Exchange a workload identity for a Gmail access token (RFC 8693), or refuse."""
    with metrics.FETCH_SECONDS.time():
        return _exchange()


def _exchange() -> Response:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    ip = client_ip(request, app.config["BROKER"].TRUSTED_PROXIES)
    req = parse_exchange()
    caller, proof = _authenticated(app, str(ip))
    try:
        match = admit_subject(app, req.subject_token, ip=str(ip))
    except InvalidRequest:
        _count_failure(str(ip))  # a stream of forged tokens is limited like bad secrets
        raise
    rule = match.rule
    client = client_auth.get_cache(app).get(app, rule.client_id)
    if client is None:
        raise InvalidRequest(REJECTED)
    credential = {"via": "workload", "issuer": rule.issuer[:200],
                  "subject": match.subject[:200], "rule": str(rule.id), **proof}
    handout = Handout(app, client, ip, credential=credential)
    if client.status != "active":
        handout.refuse(Forbidden("The API client this trust rule names is disabled."))
    if caller is not None and caller.id != client.id:
        handout.refuse(Forbidden("The authenticated client is not the one this rule names."))
    handout.check_ip()
    try:
        get_limits(app).hit_client(client.id)
    except RateLimited:
        metrics.RATE_LIMITED.labels(kind="api").inc()
        raise
    if "*" not in rule.users:
        with get_db(app).transaction(write=False) as session:
            user_id = trusts.find_user(session, client.tenant_id, req.login_hint)
        if not rule.admits_user(user_id):
            handout.refuse(Forbidden("This workload may not act for this user."))
    if req.requested_token_type == PROXY_TOKEN:
        return proxy_token(handout, req, match)
    result = handout.run(TokenRequest(user=req.login_hint, scopes=req.scopes,
                                      min_ttl=req.min_ttl, rejected_token=None))
    now = get_clock(app)()
    expires_in = int((result.token.expires_at - now).total_seconds())
    response = jsonify(
        access_token=result.token.access_token, issued_token_type=ACCESS_TOKEN,
        token_type="Bearer",  # noqa: S106 - a token type, not a secret
        expires_in=max(0, expires_in), scope=" ".join(result.token.scopes),
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response
