"""Random secrets and the digest under which the broker stores them (client, session, state)."""

from __future__ import annotations

import hashlib
import secrets


def new_secret() -> str:
    """Return a fresh random value of 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """Return the SHA-256 hex digest under which a secret value is stored.

    Every value digested here is a high-entropy random secret, so no slow hash is needed.
    """
    return hashlib.sha256(value.encode()).hexdigest()
