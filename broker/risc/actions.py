"""Act on a verified security event: the issue's action table, one transaction per event."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.config import Settings
from broker.keys import REFRESH_TOKEN_ID_COLUMNS, token_id
from broker.models import (
    AccessToken,
    BrowserSession,
    Connection,
    Policy,
    SecurityEvent,
    SecurityEventTenant,
    User,
)
from broker.risc.verify import SecurityEventToken
from broker.scopes import gmail_only
from broker.tokens import HELD_REASON

RISC_TYPES = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH_TYPES = "https://schemas.openid.net/secevent/oauth/event-type/"
KNOWN = (
    "sessions-revoked", "tokens-revoked", "token-revoked", "account-disabled",
    "account-enabled", "account-credential-change-required", "verification",
)
# What a browser session ended by Google's word records as its end reason.
SESSION_END = "google_risc"
REVOKED_REASON = "revoked_at_google"
ACTOR = "google"


def short_type(uri: str) -> str:
    """Return an event type's short name (`tokens-revoked`), or `unknown`.

    Either namespace is read for every type: older SETs named the token events under the
    RISC namespace, which Google has since moved to the OAuth one.
    """
    for prefix in (OAUTH_TYPES, RISC_TYPES):
        if uri.startswith(prefix) and uri[len(prefix):] in KNOWN:
            return uri[len(prefix):]
    return "unknown"


@dataclass(frozen=True)
class Subject:
    """Who an event is about: a Google `sub`, an email, or a refresh token's identifier."""

    sub: str | None = None
    email: str | None = None
    token_id: str | None = None

    def describe(self) -> str:
        """Return what the record keeps of the subject (never a token identifier)."""
        if self.sub:
            return f"iss_sub:{self.sub}"[:400]
        if self.email:
            return f"email:{self.email}"[:400]
        return "oauth_token" if self.token_id else ""


def subject_of(event: dict[str, Any]) -> Subject:
    """Read an event's subject (`iss-sub`, `id_token_claims`, `email` or `oauth_token`)."""
    raw = event.get("subject")
    if not isinstance(raw, dict):
        return Subject()
    sub, email = raw.get("sub"), raw.get("email")
    if raw.get("subject_type") == "oauth_token":
        alg, token = raw.get("token_identifier_alg"), raw.get("token")
        if isinstance(alg, str) and isinstance(token, str):
            return Subject(token_id=token_id(alg, token))
        return Subject()
    return Subject(
        sub=sub if isinstance(sub, str) and sub else None,
        email=email.strip().lower() if isinstance(email, str) and email.strip() else None,
    )


@dataclass
class Acted:
    """What acting on one event did: its outcome and the tenants it reached."""

    kind: str
    outcome: str
    tenants: set[uuid.UUID]
    detail: str | None = None


class Actions:
    """Carry out one event's row of the action table in the caller's transaction."""

    def __init__(
        self, session: Session, settings: Settings, event: SecurityEventToken, now: dt.datetime
    ) -> None:
        self.session = session
        self.settings = settings
        self.event = event
        self.now = now
        self.tenants: set[uuid.UUID] = set()

    def _users(self, subject: Subject) -> list[User]:
        """Return the users, in every tenant, that the subject names."""
        if subject.sub is None and subject.email is None:
            return []
        user_match, conn_match = [], []
        if subject.sub is not None:
            user_match.append(User.google_sub == subject.sub)
            conn_match.append(Connection.google_sub == subject.sub)
        if subject.email is not None:
            user_match.append(func.lower(User.email) == subject.email)
            conn_match.append(func.lower(Connection.email) == subject.email)
        through = select(Connection.user_id).where(or_(*conn_match))
        return list(self.session.scalars(
            select(User).where(or_(*user_match, User.id.in_(through))).order_by(User.id)
        ))

    def _connections(self, users: Iterable[User]) -> list[Connection]:
        ids = [user.id for user in users]
        if not ids:
            return []
        return list(self.session.scalars(
            select(Connection).where(Connection.user_id.in_(ids)).order_by(Connection.id)
            .with_for_update()
        ))

    def _audit(self, kind: str, user_id: uuid.UUID, tenant_id: uuid.UUID, **details: Any) -> None:
        self.tenants.add(tenant_id)
        audit.record(
            self.session, now=self.now, action=f"risc.{kind}", tenant_id=tenant_id,
            actor_type="system", actor_id=ACTOR, subject_user_id=user_id,
            reason=details.pop("reason", None),
            details={"jti": self.event.jti[:80], **{k: str(v) for k, v in details.items()}},
        )

    def end_sessions(self, users: Iterable[User], kind: str) -> int:
        """End the users' open browser sessions; audit per user."""
        ended = 0
        for user in users:
            count = self.session.execute(
                update(BrowserSession)
                .where(BrowserSession.user_id == user.id, BrowserSession.ended_at.is_(None))
                .values(ended_at=self.now, end_reason=SESSION_END)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            ended += int(count)
            self._audit(kind, user.id, user.tenant_id, sessions_ended=int(count))
        return ended

    def _reauth_url(self, conn: Connection) -> str:
        kept = [s for s in gmail_only(conn.granted_scopes) if s not in conn.withheld_scopes]
        base = str(self.settings.PUBLIC_URL).rstrip("/")
        return f"{base}/connections/connect?{urlencode({'scope': ' '.join(kept)})}"

    def _announce(self, conn: Connection, event: str, reason: str | None = None) -> None:
        payload: dict[str, Any] = {"connection_id": str(conn.id), "user_id": str(conn.user_id)}
        if reason is not None:
            payload.update(reason=reason, reauth_url=self._reauth_url(conn))
        webhooks.enqueue(self.session, conn.tenant_id, event, payload, now=self.now)

    def revoke_tokens(self, conn: Connection, kind: str) -> bool:
        """Mark a connection needs_reauth and erase its tokens (Google already revoked them)."""
        changed = conn.status in ("active", "degraded")
        if changed:
            conn.status, conn.status_reason = "needs_reauth", REVOKED_REASON
        conn.refresh_token = None
        for column in REFRESH_TOKEN_ID_COLUMNS:
            setattr(conn, column, None)
        # The grant is gone at Google: nothing left to revoke there.
        conn.revocation_pending = False
        # A refresh in flight stores its answer only by compare-and-swap on version and lease:
        # both change here, so it cannot put the connection back to active.
        conn.version += 1
        conn.refresh_lease_until = conn.refresh_lease_owner = None
        self.session.execute(delete(AccessToken).where(AccessToken.connection_id == conn.id))
        self._audit(kind, conn.user_id, conn.tenant_id, connection_id=conn.id,
                    reason=REVOKED_REASON)
        if changed:
            self._announce(conn, "connection.needs_reauth", REVOKED_REASON)
        return True

    def hold(self, conn: Connection, kind: str) -> None:
        """Hold a connection: hand-outs answer 409 until Google re-enables the account."""
        if conn.held_at is None or conn.held_at < self.event.iat:
            fresh = conn.held_at is None
            conn.held_at = self.event.iat
            conn.version += 1
            conn.refresh_lease_until = conn.refresh_lease_owner = None
            if fresh and conn.status in ("active", "degraded"):
                self._announce(conn, "connection.needs_reauth", HELD_REASON)
        self._audit(kind, conn.user_id, conn.tenant_id, connection_id=conn.id, reason=HELD_REASON)

    def release(self, conn: Connection, kind: str) -> bool:
        """Release a hold placed by an event older than this one."""
        if conn.held_at is None or conn.held_at >= self.event.iat:
            return False
        conn.held_at = None
        self._audit(kind, conn.user_id, conn.tenant_id, connection_id=conn.id)
        if conn.status in ("active", "degraded"):
            self._announce(conn, "connection.recovered")
        return True

    def act(self, uri: str, body: dict[str, Any]) -> Acted:
        """Carry out one event type's row of the table; say what came of it."""
        kind = short_type(uri)
        detail = body.get("reason") if kind == "account-disabled" else None
        if kind == "verification":
            state = body.get("state")
            return Acted(kind, "acted", set(), str(state)[:200] if state is not None else None)
        if kind == "unknown":
            return Acted(kind, "ignored", set())
        subject = subject_of(body)
        if kind == "token-revoked":
            return self._token_revoked(subject)
        users = self._users(subject)
        if not users:
            return Acted(kind, "ignored", set(), _text(detail))
        handler = getattr(self, "_" + kind.replace("-", "_"))
        acted: bool = handler(users, detail)
        return Acted(kind, "acted" if acted else "ignored", set(self.tenants), _text(detail))

    def _sessions_revoked(self, users: list[User], _detail: object) -> bool:
        self.end_sessions(users, "sessions-revoked")
        return True

    def _tokens_revoked(self, users: list[User], _detail: object) -> bool:
        for conn in self._connections(users):
            self.revoke_tokens(conn, "tokens-revoked")
        # Google asks to end sessions only when the grant was for sign-in, which ours are
        # as well; the table keeps sessions for `sessions-revoked` and disabling.
        return bool(self.tenants)

    def _token_revoked(self, subject: Subject) -> Acted:
        kind = "token-revoked"
        if subject.token_id is None:
            return Acted(kind, "ignored", set())
        conns = list(self.session.scalars(
            select(Connection).where(or_(*(
                getattr(Connection, column) == subject.token_id
                for column in REFRESH_TOKEN_ID_COLUMNS
            ))).order_by(Connection.id).with_for_update()
        ))
        for conn in conns:
            self.revoke_tokens(conn, kind)
        return Acted(kind, "acted" if conns else "ignored", set(self.tenants))

    def _account_disabled(self, users: list[User], detail: object) -> bool:
        if detail == "bulk-account":
            for user in users:
                self._audit("account-disabled", user.id, user.tenant_id, reason="bulk-account")
                webhooks.enqueue(self.session, user.tenant_id, "account.flagged", {
                    "user_id": str(user.id), "reason": "bulk-account",
                }, now=self.now)
            return True
        self.end_sessions(users, "account-disabled")
        for conn in self._connections(users):
            self.hold(conn, "account-disabled")
        return True

    def _account_enabled(self, users: list[User], _detail: object) -> bool:
        released = [self.release(conn, "account-enabled") for conn in self._connections(users)]
        if not any(released):
            for user in users:
                self._audit("account-enabled", user.id, user.tenant_id, held="no")
        return True

    def _account_credential_change_required(self, users: list[User], _detail: object) -> bool:
        policies = {p.tenant_id: p for p in self.session.scalars(
            select(Policy).where(Policy.tenant_id.in_({u.tenant_id for u in users}))
        )}
        for user in users:
            policy = policies.get(user.tenant_id)
            if policy is not None and policy.end_sessions_on_credential_change:
                self.end_sessions([user], "account-credential-change-required")
            else:
                self._audit("account-credential-change-required", user.id, user.tenant_id,
                            sessions_ended=0)
        return True


def _text(value: object) -> str | None:
    return str(value)[:200] if isinstance(value, str) else None


def record(session: Session, event: SecurityEventToken, acted: list[Acted],
           subject: str, now: dt.datetime) -> SecurityEvent:
    """Add the event's record and the tenants it reached to the caller's transaction."""
    kinds = [a.kind for a in acted]
    outcome = "acted" if any(a.outcome == "acted" for a in acted) else "ignored"
    detail = next((a.detail for a in acted if a.detail), None)
    row = SecurityEvent(
        jti=event.jti, iss=event.iss[:500], iat=event.iat, received_at=now, types=kinds,
        kind=kinds[0] if kinds else "unknown", subject=subject, outcome=outcome, detail=detail,
    )
    session.add(row)
    session.flush()
    for tenant_id in sorted(set().union(*(a.tenants for a in acted))):
        session.add(SecurityEventTenant(event_id=row.id, tenant_id=tenant_id))
    return row
