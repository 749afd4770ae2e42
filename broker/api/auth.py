"""API-client authentication over HTTP: Basic credentials (RFC 6749 form-encoding), a signed
assertion (private_key_jwt, RFC 7523 §2.2) in the JSON body or the form, or a client
certificate (RFC 8705) with the client named by `client_id` in the body or the query."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from urllib.parse import unquote

from flask import Flask, Request, current_app

from broker import metrics
from broker.clientcert import presented
from broker.clientip import client_ip
from broker.errors import InvalidClient
from broker.tenancy import ClientInfo, assertions, client_auth
from broker.tls import CertificateRejected

CHALLENGE = {"WWW-Authenticate": 'Basic realm="broker", charset="UTF-8"'}
log = logging.getLogger(__name__)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """Return (client_id, secret) from a Basic header (form-encoded per RFC 6749), or None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id or not secret or len(client_id) > 64 or len(secret) > 256:
        return None
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _fields(request: Request) -> dict[str, object]:
    """Return the JSON body's object or the form's single values ({} for anything else)."""
    if (request.content_length or 0) > 32_768:
        return {}  # the body parsers refuse it; the caller is not named from it
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # nested too deep: the body parser answers 400 for it
            return {}
        return body if isinstance(body, dict) else {}
    if request.mimetype == "application/x-www-form-urlencoded":
        return {k: v[0] if len(v) == 1 else v for k, v in request.form.lists()}
    return {}


def _may_name_assertion(request: Request) -> bool:
    """Say whether the raw body could hold a client assertion field, however it is escaped."""
    if (request.content_length or 0) > 32_768 or not (
        request.is_json or request.mimetype == "application/x-www-form-urlencoded"
    ):
        return False  # as in _fields: nothing else is read (a proxied upload streams on)
    return may_name_assertion(request.get_data(cache=True))


def may_name_assertion(body: bytes) -> bool:
    """Say whether a JSON or form body could name a client assertion, however it is escaped."""
    return b"assertion" in body or b"\\" in body or b"%" in body


def named_client(request: Request) -> str:
    """Return the `client_id` a certificate-authenticated request names ('' if none)."""
    fields = _fields(request)
    value = fields.get("client_id") if fields else request.args.get("client_id")
    return value if isinstance(value, str) and 0 < len(value) <= 64 else ""


def endpoint_url(request: Request) -> str:
    """Return the URL an assertion for this endpoint names as `aud`: the public URL + path."""
    settings = current_app.config["BROKER"]
    return str(settings.PUBLIC_URL).rstrip("/") + request.path


def _assertion(request: Request, fields: dict[str, object]) -> tuple[ClientInfo, dict[str, str]]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    kind, assertion = fields.get("client_assertion_type"), fields.get("client_assertion")
    named = fields.get("client_id", "")
    try:
        if kind != assertions.ASSERTION_TYPE or not isinstance(assertion, str):
            raise assertions.AssertionRejected("assertion_type")
        asserted = assertions.verify_assertion(
            app, assertion, endpoint_url(request), named=named if isinstance(named, str) else "?",
            ip=str(client_ip(request, app.config["BROKER"].TRUSTED_PROXIES)),
        )
    except assertions.AssertionRejected as rejected:
        metrics.ASSERTION_FAILURES.labels(reason=rejected.reason).inc()
        log.warning("client assertion refused (%s)", rejected.reason,
                    extra={"event": "assertion_refused", "reason": rejected.reason})
        raise InvalidClient("Client authentication failed.") from None
    return asserted.client, asserted.credential


def verify_basic(app: Flask, header: str, now: dt.datetime) -> tuple[ClientInfo, dict[str, str]]:
    """Return the client a Basic Authorization header proves (InvalidClient if none)."""
    credentials = parse_basic(header)
    if credentials is None:
        raise InvalidClient("HTTP Basic client credentials are required.", headers=CHALLENGE)
    client_id, secret = credentials
    return client_auth.verify_secret(app, client_id, secret, now, headers=CHALLENGE), {}


def authenticate(request: Request, now: dt.datetime) -> tuple[ClientInfo, dict[str, str]]:
    """Return the authenticated client and what the audit records of its credential.

    Raises InvalidClient (same cost for unknown ids); a certificate's failure is described
    generically, its reason going to the log and `broker_mtls_failures_total`.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.config["BROKER"]
    header = request.headers.get("Authorization")
    # With a header, the body is read only to refuse a second method: skip parsing it when it
    # cannot name one (no escapes, no percent-encoding, no "assertion"), as on every hand-out.
    fields = _fields(request) if not header or _may_name_assertion(request) else {}
    if "client_assertion" in fields or "client_assertion_type" in fields:
        if header:  # RFC 6749 §2.3: one authentication method per request
            raise InvalidClient("Use one client authentication method.", headers=CHALLENGE)
        return _assertion(request, fields)
    if header:
        return verify_basic(app, header, now)
    try:
        offered = presented(request, settings.MTLS_PROXIES, settings.MTLS_HEADER)
        if offered is None:
            raise InvalidClient("HTTP Basic client credentials, a client assertion or a client "
                                "certificate are required.", headers=CHALLENGE)
        client_id = named_client(request)
        if not client_id:
            raise CertificateRejected("no_client_id")
        client = client_auth.verify_certificate(app, client_id, offered, now)
    except CertificateRejected as rejected:
        metrics.MTLS_FAILURES.labels(reason=rejected.reason).inc()
        log.warning("client certificate refused (%s)", rejected.reason,
                    extra={"event": "mtls_refused", "reason": rejected.reason})
        raise InvalidClient("Client authentication failed.") from None
    return client, offered.audit()
