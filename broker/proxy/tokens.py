"""Proxy tokens: short-lived, opaque credentials bound to one API client and one user.

A proxy token is AES-GCM ciphertext under a key derived from the broker's secret key, so every
replica reads it and no job can: it names the client, the tenant, the user and its expiry, and
is useless anywhere but at /proxy/ (Google refuses it; it is not a Google token). Each call
still re-checks the client and the user against the database and the tenant's policy.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import InvalidToken

PREFIX = "bpt1."
_AAD = b"broker proxy token v1"


@dataclass(frozen=True)
class ProxyGrant:
    """What a proxy token stands for."""

    client_id: str
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    expires_at: dt.datetime


class ProxyTokens:
    """Seal and open proxy tokens with a key derived from the broker's secret key."""

    def __init__(self, secret_key: str) -> None:
        self._aead = AESGCM(HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"broker proxy tokens",
        ).derive(secret_key.encode()))

    def issue(self, grant: ProxyGrant) -> str:
        """Return the opaque token for a grant."""
        body = json.dumps({
            "c": grant.client_id, "t": str(grant.tenant_id), "u": str(grant.user_id),
            "m": grant.email, "e": int(grant.expires_at.timestamp()),
        }, separators=(",", ":")).encode()
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, body, _AAD)
        return PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, token: str, now: dt.datetime) -> ProxyGrant:
        """Return the grant of a valid, unexpired token, or raise InvalidToken."""
        if not token.startswith(PREFIX) or len(token) > 1024:
            raise InvalidToken()
        text = token[len(PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], _AAD))
            grant = ProxyGrant(
                fields["c"], uuid.UUID(fields["t"]), uuid.UUID(fields["u"]), fields["m"],
                dt.datetime.fromtimestamp(fields["e"], dt.UTC),
            )
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            raise InvalidToken() from None
        if grant.expires_at <= now:
            raise InvalidToken("The proxy token has expired; get a new one.")
        return grant
