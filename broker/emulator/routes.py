"""Google's machine-facing endpoints: discovery, token, revoke, userinfo, certs, tokeninfo."""

from __future__ import annotations

from html import escape
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from broker.emulator.context import (
    account_of,
    bearer_token,
    get_emulator,
    issuer,
    json_response,
    only_in_emulator,
)
from broker.emulator.faults import NO_CACHE, faulty
from broker.emulator.gmailcalls import GMAIL_PATHS
from broker.emulator.oauth import OAuthError, profile_claims
from broker.emulator.scopes import EMAIL, IDENTITY_SCOPES, PROFILE, scope_string

bp = Blueprint("emulator_google", __name__)
bp.record_once(only_in_emulator)

REALM = 'Bearer realm="https://accounts.google.com/"'


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    """Describe the emulator the way Google's discovery document describes Google."""
    base = issuer()
    document = {
        "issuer": base,
        "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
        "token_endpoint": f"{base}/token",
        "userinfo_endpoint": f"{base}/v1/userinfo",
        "revocation_endpoint": f"{base}/revoke",
        "jwks_uri": f"{base}/oauth2/v3/certs",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": [
            "aud",
            "email",
            "email_verified",
            "exp",
            "family_name",
            "given_name",
            "iat",
            "iss",
            "name",
            "picture",
            "sub",
        ],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "authorization_response_iss_parameter_supported": True,
    }
    return json_response(document, headers={"Cache-Control": "public, max-age=3600"})


@bp.post("/token")
@faulty("token")
def token() -> Response:
    """Exchange a code or a refresh token."""
    headers = {"Authorization": request.headers.get("Authorization", "")}
    emulator = get_emulator()
    if request.form.get("grant_type") == "refresh_token":
        # Counted per account, so a test can tell one connection's refreshes from the rest.
        state = emulator.state
        with state.lock:
            held = state.refresh_tokens.get(request.form.get("refresh_token", ""))
            account = state.accounts.get(held.sub) if held is not None else None
        if account is not None:
            emulator.faults.count_refresh(account.email)
    try:
        answer = emulator.tokens.token(request.form, headers, issuer())
    except OAuthError as refusal:
        return json_response(refusal.body(), refusal.status_code, NO_CACHE)
    return json_response(answer, headers=NO_CACHE)


@bp.post("/revoke")
@faulty("revoke")
def revoke() -> Response:
    """Revoke the whole grant behind a token."""
    raw = request.form.get("token") or request.args.get("token")
    try:
        get_emulator().tokens.revoke(raw)
    except OAuthError as refusal:
        return json_response(refusal.body(), refusal.status_code, NO_CACHE)
    return Response(b"", status=200, mimetype="application/json", headers=NO_CACHE)


@bp.get("/oauth2/v3/certs")
@faulty("certs")
def certs() -> Response:
    """Publish the signing keys as a JWK Set."""
    cache = {"Cache-Control": "public, max-age=300, must-revalidate, no-transform"}
    return json_response(get_emulator().keys.jwks(), headers=cache)


@bp.get("/oauth2/v1/certs")
@faulty("certs")
def x509_certs() -> Response:
    """Publish the signing keys as PEM certificates, as Google's older endpoint does."""
    cache = {"Cache-Control": "public, max-age=300, must-revalidate, no-transform"}
    return json_response(get_emulator().keys.x509_certificates(), headers=cache)


@bp.route("/v1/userinfo", methods=["GET", "POST"])
@faulty("userinfo")
def userinfo() -> Response:
    """Return the OpenID claims the token's scopes allow."""
    token = bearer_token()
    account = account_of(token) if token else None
    if token is None or account is None:
        body = {"error": "invalid_request", "error_description": "Invalid Credentials"}
        headers = {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
        return json_response(body, 401, headers)
    claims: dict[str, Any] = {"sub": account.sub}
    if PROFILE in token.scopes:
        claims.update(profile_claims(account, issuer()))
    if EMAIL in token.scopes:
        claims["email"] = account.email
        claims["email_verified"] = account.email_verified
    if account.hd:
        claims["hd"] = account.hd
    return json_response(claims)


@bp.route("/tokeninfo", methods=["GET", "POST"])
@faulty("tokeninfo")
def tokeninfo() -> Response:
    """Describe an access token or id_token with every value as a string."""
    emulator = get_emulator()
    values = request.values
    invalid = json_response({"error": "invalid_token", "error_description": "Invalid Value"}, 400)
    if values.get("id_token"):
        verified = emulator.keys.verify(values["id_token"])
        if verified is None:
            return invalid
        header, claims = verified
        if int(claims.get("exp", 0)) <= emulator.state.now():
            return invalid
        info = {k: _as_string(v) for k, v in claims.items()}
        info.update(alg=str(header.get("alg")), kid=str(header.get("kid")), typ="JWT")
        return json_response(info)
    token = emulator.tokens.active_access_token(values.get("access_token"))
    account = account_of(token) if token else None
    if token is None or account is None:
        return invalid
    info = {"azp": token.client_id, "aud": token.client_id}
    if IDENTITY_SCOPES & set(token.scopes):
        info["sub"] = account.sub
    info["scope"] = scope_string(token.scopes)
    info["exp"] = str(token.expires_at)
    info["expires_in"] = str(token.expires_at - emulator.state.now())
    if EMAIL in token.scopes:
        info["email"] = account.email
        info["email_verified"] = _as_string(account.email_verified)
    info["access_type"] = token.access_type
    return json_response(info)


def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def unknown_api_method(error: HTTPException) -> Response | HTTPException:
    """Answer an unknown Gmail API path or method as Google's API front end does: JSON 404."""
    if not request.path.startswith(GMAIL_PATHS):
        return error
    body = {"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}
    return json_response(body, 404)


@bp.get("/picture/<sub>.svg")
def picture(sub: str) -> Response:
    """Draw an account's initial, so `picture` claims point at something offline."""
    state = get_emulator().state
    with state.lock:
        account = state.accounts.get(sub)
    initial = escape((account.name if account else "?")[:1].upper() or "?")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96">'
        '<circle cx="48" cy="48" r="48" fill="#5f6368"/>'
        f'<text x="48" y="62" font-size="44" text-anchor="middle" fill="#fff" '
        f'font-family="sans-serif">{initial}</text></svg>'
    )
    return Response(svg, mimetype="image/svg+xml")
