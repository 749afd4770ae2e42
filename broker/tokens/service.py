"""Access tokens for jobs: the service the hand-out and the worker share (DESIGN §8).

Split by concern: `store` reads, opens and judges stored tokens; `refresh` runs the
single-flight refresh under the lease.
"""

from __future__ import annotations

from flask import Flask, current_app

from broker.tokens.refresh import Refresher
from broker.tokens.store import Issued, StoredToken, Want

__all__ = ["EXTENSION", "Issued", "StoredToken", "TokenService", "Want", "get_tokens"]
EXTENSION = "broker.tokens"


class TokenService(Refresher):
    """Hand out stored tokens and refresh them at most once per connection at a time."""


def get_tokens(app: Flask | None = None) -> TokenService:
    """Return the app's token service."""
    app = app or current_app
    service: TokenService = app.extensions[EXTENSION]
    return service
