"""API-client authentication over HTTP: Basic credentials (RFC 6749 form-encoding)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from urllib.parse import unquote

from flask import Flask, Request, current_app

from broker.errors import InvalidClient
from broker.tenancy import ClientInfo, client_auth

CHALLENGE = {"WWW-Authenticate": 'Basic realm="broker", charset="UTF-8"'}


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


def authenticate(request: Request, now: dt.datetime) -> ClientInfo:
    """Return the authenticated client or raise InvalidClient (same cost for unknown ids)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    credentials = parse_basic(request.headers.get("Authorization"))
    if credentials is None:
        raise InvalidClient("HTTP Basic client credentials are required.", headers=CHALLENGE)
    client_id, secret = credentials
    return client_auth.verify_secret(app, client_id, secret, now, headers=CHALLENGE)
