"""API-client authentication over HTTP: Basic credentials (RFC 6749 form-encoding), or a client
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
from broker.errors import InvalidClient
from broker.tenancy import ClientInfo, client_auth
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


def named_client(request: Request) -> str:
    """Return the `client_id` a certificate-authenticated request names ('' if none)."""
    if (request.content_length or 0) > 16_384:
        return ""  # the body parser refuses it; the caller is not named from it
    body = request.get_json(silent=True) if request.is_json else None
    value = body.get("client_id") if isinstance(body, dict) else request.args.get("client_id")
    return value if isinstance(value, str) and 0 < len(value) <= 64 else ""


def authenticate(request: Request, now: dt.datetime) -> tuple[ClientInfo, dict[str, str]]:
    """Return the authenticated client and what the audit records of its credential.

    Raises InvalidClient (same cost for unknown ids); a certificate's failure is described
    generically, its reason going to the log and `broker_mtls_failures_total`.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.config["BROKER"]
    header = request.headers.get("Authorization")
    if header:
        credentials = parse_basic(header)
        if credentials is None:
            raise InvalidClient("HTTP Basic client credentials are required.",
                                headers=CHALLENGE)
        client_id, secret = credentials
        return client_auth.verify_secret(app, client_id, secret, now, headers=CHALLENGE), {}
    try:
        offered = presented(request, settings.MTLS_PROXIES, settings.MTLS_HEADER)
        if offered is None:
            raise InvalidClient("HTTP Basic client credentials or a client certificate are "
                                "required.", headers=CHALLENGE)
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
