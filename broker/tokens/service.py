"""Access tokens for jobs: the service the hand-out and the worker share (DESIGN §8).

Composed of two parts it holds: `TokenStore` reads, opens and judges stored tokens;
`Refresher` runs the single-flight refresh under the lease.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Sequence

from flask import Flask, current_app
from sqlalchemy.orm import Session

from broker.clock import Clock, Sleep, app_clock, app_sleep
from broker.config import Settings
from broker.db import Database, get_db
from broker.google import Google, get_google
from broker.keys import get_keys
from broker.models import Connection
from broker.tokens.refresh import Lease, Locked, Refresher
from broker.tokens.store import Issued, Keys, StoredToken, TokenStore, Want

__all__ = ["EXTENSION", "Issued", "StoredToken", "TokenService", "Want", "get_tokens",
           "init_app", "lease_owner"]
EXTENSION = "broker.tokens"


def lease_owner() -> str:
    """Return a name for this process's leases: host, pid and a random part."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class TokenService:
    """Hand out stored tokens and refresh them at most once per connection at a time."""

    def __init__(
        self, *, db: Database, keys: Keys, google: Callable[[], Google], settings: Settings,
        clock: Clock, sleep: Sleep, owner: str,
    ) -> None:
        self.db = db
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.store = TokenStore(db, keys, settings, clock)
        self.refresher = Refresher(
            self.store, db=db, keys=keys, google=google, settings=settings, clock=clock,
            sleep=sleep, owner=owner,
        )

    @property
    def owner(self) -> str:
        """Return the name this service's leases carry."""
        return self.refresher.owner

    def admissible(self, row: StoredToken, allow_broader: bool) -> bool:
        """Say whether a stored token may serve at all (current binding, within its key)."""
        return self.store.admissible(row, allow_broader)

    def satisfies(self, row: StoredToken | None, want: Want, now: dt.datetime) -> bool:
        """Say whether a stored token serves this request."""
        return self.store.satisfies(row, want, now)

    def mark_needs_reauth(
        self, session: Session, conn: Connection, reason: str, want: Want
    ) -> None:
        """Mark a connection needs_reauth, drop its tokens, audit it and queue the webhook."""
        self.store.mark_needs_reauth(session, conn, reason, want)

    def obtain(self, want: Want, deadline: float) -> Issued:
        """Return a token for `want` by `deadline` (monotonic), refreshing at most once."""
        return self.refresher.obtain(want, deadline)

    def claim_locked(
        self, session: Session, rows: Sequence[Locked], now: dt.datetime
    ) -> list[Lease | None]:
        """Claim the leases of rows the caller holds locked (the worker); None where not."""
        return self.refresher.claim_locked(session, rows, now)

    def refresh_held(self, want: Want, lease: Lease) -> bool:
        """Refresh under a lease claimed by `claim_locked`; say whether a token was stored."""
        return self.refresher.refresh_held(want, lease)


def init_app(app: Flask) -> None:
    """Build the app's token service from the app's database, keys, Google, clock and sleep."""
    app.extensions[EXTENSION] = TokenService(
        db=get_db(app),
        keys=lambda: get_keys(app),
        google=lambda: get_google(app),
        settings=app.config["BROKER"],
        clock=app_clock(app),
        sleep=app_sleep(app),
        owner=lease_owner(),
    )


def get_tokens(app: Flask | None = None) -> TokenService:
    """Return the app's token service."""
    app = app or current_app
    service: TokenService = app.extensions[EXTENSION]
    return service
