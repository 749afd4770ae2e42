"""Stored access tokens: what a hand-out wants, reading, opening and judging rows (DESIGN §8)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from sqlalchemy import delete
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.clock import Clock
from broker.config import Settings
from broker.db import Database
from broker.errors import NotConnected, ReauthRequired, UpstreamUnavailable
from broker.keys import KeyService, SealError, access_token_bound, is_unbound
from broker.models import AccessToken, Connection
from broker.scopes import gmail_only
from broker.tokens import rules

# Google disabled the account (RISC `account-disabled`): the connection is held.
HELD_REASON = "google_account_disabled"
HELD_DESCRIPTION = "Google disabled this account; the user must sign in to Google again."


@dataclass(frozen=True)
class Issued:
    """An access token ready to hand out."""

    access_token: str
    expires_at: dt.datetime
    scopes: list[str]
    token_id: uuid.UUID


@dataclass(frozen=True)
class Want:
    """What a hand-out needs from the slow path."""

    connection_id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    scopes: list[str]
    scope_key: str
    min_ttl: int
    allow_broader: bool
    # A job reported this token dead: only a different token satisfies the request.
    rejected_id: uuid.UUID | None = None
    actor_id: str | None = None
    ip: str | None = None
    # The connection's version when the hand-out read it: the refresh claims the lease in one
    # statement only while nothing changed since (else it reads again, as without it).
    seen_version: int | None = None

    @property
    def actor_type(self) -> str:
        """Return who asked: the worker (system) or an API client."""
        return "system" if self.actor_id == "worker" else "client"


class StoredToken(Protocol):
    """A stored access token as judging and opening need it: an AccessToken or a read row."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def connection_id(self) -> uuid.UUID: ...
    @property
    def scope_key(self) -> str: ...
    @property
    def token(self) -> bytes: ...
    @property
    def scopes(self) -> list[str]: ...
    @property
    def expires_at(self) -> dt.datetime: ...
    @property
    def obtained_at(self) -> dt.datetime: ...


# A provider, not the service: an app made without keys (the CLI's) loads them on first use.
Keys = Callable[[], KeyService]


class TokenStore:
    """Read, open and judge stored tokens; mark a connection needs_reauth."""

    def __init__(self, db: Database, keys: Keys, settings: Settings, clock: Clock) -> None:
        self.db = db
        self.keys = keys
        self.settings = settings
        self.clock = clock

    def open(self, session: Session, tenant_id: uuid.UUID, row: StoredToken) -> str:
        """Open a stored access token (raise SealError if it does not open)."""
        return self.keys().open(
            session, tenant_id, row.id, "access_token", row.token,
            bound=access_token_bound(row.connection_id, row.scope_key),
        ).decode()

    def admissible(self, row: StoredToken, allow_broader: bool) -> bool:
        """Say whether a stored token may serve at all, judged on values already read.

        A row sealed before access tokens were bound to their connection and scope key is a
        stale cache (refreshed, not opened; any other format is opened, and refused if bad);
        one carrying Gmail scopes beyond its scope key serves only while the tenant allows
        broader tokens (issue 11 items 3 and 11).
        """
        if is_unbound(row.token):
            return False
        return rules.within_key(row.scopes, row.scope_key, allow_broader)

    def satisfies(self, row: StoredToken | None, want: Want, now: dt.datetime) -> bool:
        """Say whether a stored token serves this request."""
        if row is None or (want.rejected_id is not None and row.id == want.rejected_id):
            return False
        if not self.admissible(row, want.allow_broader):
            return False
        return rules.token_ready(
            row.expires_at, row.obtained_at, want.min_ttl, self.settings.CLOCK_SKEW, now
        )

    def read(self, session: Session, want: Want) -> tuple[Connection, AccessToken | None]:
        """Return a live connection and its stored token for `want`; refuse a dead one."""
        conn = session.get(Connection, want.connection_id)
        if conn is None or conn.status == "revoked":
            raise NotConnected()
        if conn.status == "needs_reauth":
            raise ReauthRequired(reason=conn.status_reason or "revoked_or_expired")
        if conn.held_at is not None:
            raise ReauthRequired(HELD_DESCRIPTION, reason=HELD_REASON)
        return conn, session.get(AccessToken, (want.connection_id, want.scope_key))

    def issued(self, session: Session, want: Want, row: AccessToken) -> Issued:
        """Open a stored token for hand-out; an unreadable one needs the user again."""
        try:
            token = self.open(session, want.tenant_id, row)
        except SealError:
            raise ReauthRequired(reason="token_unreadable") from None
        return Issued(token, row.expires_at, list(row.scopes), row.id)

    def fallback(self, want: Want, retry: float, description: str) -> Issued:
        """Serve the stored token while it is valid at all, else 503 with Retry-After."""
        now = self.clock()
        with self.db.transaction(write=False) as session:
            _, row = self.read(session, want)
            usable = row is not None and row.expires_at > now + dt.timedelta(seconds=5)
            if (usable and row is not None and row.id != want.rejected_id
                    and self.admissible(row, want.allow_broader)):
                return self.issued(session, want, row)
        raise UpstreamUnavailable(
            description, headers={"Retry-After": str(max(1, int(retry + 0.999)))}
        )

    def mark_needs_reauth(
        self, session: Session, conn: Connection, reason: str, want: Want
    ) -> None:
        """Mark a connection needs_reauth, drop its tokens, audit it and queue the webhook."""
        conn.status, conn.status_reason = "needs_reauth", reason
        conn.refresh_lease_until = conn.refresh_lease_owner = None
        session.execute(delete(AccessToken).where(AccessToken.connection_id == conn.id))
        audit.record(
            session, now=self.clock(), action="connection.needs_reauth", tenant_id=conn.tenant_id,
            actor_type="system", subject_user_id=conn.user_id, outcome="error", reason=reason,
            ip=want.ip, details={"client_id": want.actor_id},
        )
        # Re-consent asks back only what jobs may use: a withheld scope stays withheld.
        kept = rules.usable(gmail_only(conn.granted_scopes), conn.withheld_scopes)
        scope = urlencode({"scope": " ".join(kept)})
        reauth_url = f"{str(self.settings.PUBLIC_URL).rstrip('/')}/connections/connect?{scope}"
        webhooks.enqueue(session, conn.tenant_id, "connection.needs_reauth",
                         {**event_payload(conn.id, conn.user_id), "reason": reason,
                          "reauth_url": reauth_url})


def event_payload(connection_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, object]:
    """Return the common part of a connection webhook's payload."""
    return {"connection_id": str(connection_id), "user_id": str(user_id)}
