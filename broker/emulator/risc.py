"""Google's Cross-Account Protection transmitter: configuration, stream API, pushed SETs.

Events are signed with the emulator's id_token keys (Google's configuration names the same
JWKS) and delivered synchronously, so a test reads the receiver's answer from the control.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

import httpx
from flask import Blueprint, Response, request
from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.emulator.context import get_emulator, issuer, json_response, only_in_emulator

bp = Blueprint("emulator_risc", __name__)
bp.record_once(only_in_emulator)

RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
PUSH = "https://schemas.openid.net/secevent/risc/delivery-method/push"
MANAGEMENT_AUDIENCE = (
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
)
TOKEN_EVENTS = ("tokens-revoked", "token-revoked")
EVENTS = ("sessions-revoked", *TOKEN_EVENTS, "account-disabled", "account-enabled",
          "account-credential-change-required", "verification")
FAULTS = ("bad_signature", "unknown_kid", "wrong_aud", "wrong_iss", "expired", "repeat_jti",
          "legacy_uri")
DELIVERY_TIMEOUT = 10.0


class RiscError(Exception):
    """A stream call or control that cannot be carried out."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@bp.errorhandler(RiscError)
def risc_error(error: RiscError) -> Response:
    """Answer in Google's error shape (the controls read it the same way)."""
    body = {"error": {"code": error.status, "message": error.message,
                      "status": "INVALID_ARGUMENT" if error.status == 400 else "FAILED"}}
    return json_response(body, error.status)


def risc_issuer() -> str:
    """Return the SETs' issuer: Google's has a trailing slash, and so has ours."""
    return issuer() + "/"


def type_uri(name: str, legacy: bool = False) -> str:
    """Return an event type's URI (token events under the RISC namespace when legacy)."""
    if name.startswith(("http://", "https://")):
        return name
    if name not in EVENTS:
        raise RiscError(f"unknown event {name!r}; one of {', '.join(EVENTS)}")
    return (OAUTH if name in TOKEN_EVENTS and not legacy else RISC) + name


@bp.get("/.well-known/risc-configuration")
def configuration() -> Response:
    """Serve the transmitter's configuration: issuer and the JWKS that signs events."""
    base = issuer()
    return json_response({
        "issuer": risc_issuer(),
        "jwks_uri": f"{base}/oauth2/v3/certs",
        "delivery_methods_supported": [PUSH],
        "add_subject_endpoint": f"{base}/v1beta/subjects:add",
        "remove_subject_endpoint": f"{base}/v1beta/subjects:remove",
    })


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise RiscError("the body must be a JSON object")
    return body


def _service_account() -> None:
    """Require a service-account assertion for the management API (its signature unchecked:
    the emulator knows no service accounts)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise RiscError("Request is missing required authentication credential.", 401)
    token = header.removeprefix("Bearer ").strip()
    try:
        parts = token.split(".")
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        raise RiscError("Request had invalid authentication credentials.", 401) from None
    if not isinstance(claims, dict) or claims.get("aud") != MANAGEMENT_AUDIENCE:
        raise RiscError("Request had invalid authentication credentials.", 401)


def set_stream(url: str, audience: str | list[str] | None) -> dict[str, Any]:
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise RiscError("The delivery endpoint must be an HTTPS URL.")
    state = get_emulator().state
    with state.lock:
        clients = sorted(state.clients)
        stream = {"url": url, "audience": audience or (clients[0] if len(clients) == 1
                                                       else clients),
                  "status": "enabled"}
        state.risc_stream = stream
        return dict(stream)


@bp.post("/v1beta/stream:update")
def stream_update() -> Response:
    """Register the receiver (the management API's call)."""
    _service_account()
    delivery = _body().get("delivery")
    if not isinstance(delivery, dict) or delivery.get("delivery_method") != PUSH:
        raise RiscError("delivery.delivery_method must be the push method")
    set_stream(str(delivery.get("url", "")), None)
    return json_response({})


@bp.get("/v1beta/stream")
def stream_get() -> Response:
    """Return the stream's configuration."""
    _service_account()
    stream = _stream()
    return json_response({"delivery": {"delivery_method": PUSH, "url": stream["url"]},
                          "events_requested": [type_uri(e) for e in EVENTS]})


@bp.get("/v1beta/stream/status")
def stream_status() -> Response:
    """Return whether the stream is enabled."""
    _service_account()
    return json_response({"status": _stream()["status"]})


@bp.post("/v1beta/stream/status:update")
def stream_status_update() -> Response:
    """Enable or disable the stream (events are not buffered while disabled)."""
    _service_account()
    wanted = _body().get("status")
    if wanted not in ("enabled", "disabled"):
        raise RiscError("status must be enabled or disabled")
    state = get_emulator().state
    with state.lock:
        _stream()["status"] = wanted
    return json_response({"status": wanted})


@bp.post("/v1beta/stream:verify")
def stream_verify() -> Response:
    """Send a `verification` event carrying the caller's state, now."""
    _service_account()
    state_value = _body().get("state")
    event = {type_uri("verification"): {"state": str(state_value or "")}}
    answer = deliver(event)
    if answer["status"] >= 300:
        raise RiscError(f"the receiver answered {answer['status']}", 400)
    return json_response({})


def _stream() -> dict[str, Any]:
    stream = get_emulator().state.risc_stream
    if stream is None:
        raise RiscError("Project has no RISC configuration.", 404)
    return stream


def _sign(claims: dict[str, Any], fault: str | None) -> str:
    keys = get_emulator().keys
    if fault == "unknown_kid":
        stranger = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(20)})
        header = {"alg": "RS256", "kid": str(stranger.kid), "typ": "secevent+jwt"}
        return jwt.encode(header, claims, stranger)
    token = keys.sign(claims, typ="secevent+jwt")
    if fault == "bad_signature":
        head, payload, signature = token.split(".")
        flipped = "A" if signature[10] != "A" else "B"
        token = f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}"
    return token


def deliver(events: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
    """Sign one SET and POST it to the registered receiver; return its answer."""
    emulator = get_emulator()
    state = emulator.state
    if fault is not None and fault not in FAULTS:
        raise RiscError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    with state.lock:
        stream = dict(_stream())
        if stream["status"] != "enabled":
            return {"status": 0, "body": "stream disabled: event dropped", "jti": None}
        jti = secrets.token_hex(16)
        if fault == "repeat_jti" and state.risc_last_jti:
            jti = state.risc_last_jti
        state.risc_last_jti = jti
        now = state.now()
    claims: dict[str, Any] = {
        "iss": risc_issuer() if fault != "wrong_iss" else issuer() + "/not-google",
        "aud": stream["audience"] if fault != "wrong_aud" else "someone-else",
        "iat": now, "jti": jti, "events": events,
    }
    if fault == "expired":
        claims["exp"] = now - 3600
    token = _sign(claims, fault)
    # No lock held: the receiver calls back for the JWKS while this request waits.
    try:
        response = httpx.post(
            stream["url"], content=token, timeout=DELIVERY_TIMEOUT, follow_redirects=False,
            headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"},
        )
    except httpx.HTTPError as exc:
        return {"status": 0, "body": f"delivery failed: {type(exc).__name__}", "jti": jti}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return {"status": response.status_code, "body": body, "jti": jti}


def token_subject(refresh_token: str, alg: str = "hash_base64_sha512_sha512") -> dict[str, str]:
    """Return the `oauth_token` subject naming a refresh token as Google does."""
    if alg == "prefix":
        token = refresh_token[:16]
    else:
        inner = hashlib.sha512(refresh_token.encode()).digest()
        token = base64.b64encode(hashlib.sha512(inner).digest()).decode()
    return {"subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": alg, "token": token}


def send_event(body: dict[str, Any]) -> dict[str, Any]:
    """Build the event a control asks for, then deliver it."""
    name = str(body.get("event", ""))
    fault = body.get("fault")
    uri = type_uri(name, legacy=fault == "legacy_uri")
    detail: dict[str, Any] = {}
    if name.endswith("verification"):
        detail["state"] = str(body.get("state", ""))
    elif isinstance(body.get("refresh_token"), str):
        detail["subject"] = token_subject(body["refresh_token"], str(body.get("alg", "")) or
                                          "hash_base64_sha512_sha512")
    elif isinstance(body.get("sub"), str):
        detail["subject"] = {"subject_type": "iss-sub", "iss": risc_issuer(), "sub": body["sub"]}
    elif isinstance(body.get("email"), str):
        detail["subject"] = {"subject_type": "id_token_claims", "email": body["email"]}
    else:
        raise RiscError("give email, sub or refresh_token (or send a verification)")
    if isinstance(body.get("reason"), str):
        detail["reason"] = body["reason"]
    return deliver({uri: detail}, fault=fault if isinstance(fault, str) else None)


def revoked(sub: str, refresh_tokens: list[str]) -> list[dict[str, Any]]:
    """Tell the receiver that an account revoked access: one event per token, then all."""
    if get_emulator().state.risc_stream is None:
        return []
    answers = [deliver({OAUTH + "token-revoked": {"subject": token_subject(token)}})
               for token in refresh_tokens]
    answers.append(deliver({OAUTH + "tokens-revoked": {
        "subject": {"subject_type": "iss-sub", "iss": risc_issuer(), "sub": sub}}}))
    return answers
