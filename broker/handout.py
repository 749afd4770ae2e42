"""The hand-out decision of POST /api/v1/token, in DESIGN §7's order, every refusal audited."""

from __future__ import annotations

import datetime as dt
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlencode

from flask import Flask, current_app
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import audit, metrics, policy
from broker.api.auth import ClientInfo
from broker.clientip import IPAddress, ip_in
from broker.clock import get_clock
from broker.crypto import SealError
from broker.db import get_db
from broker.errors import (
    BrokerError,
    InvalidRequest,
    IpNotAllowed,
    LoginRequired,
    NotConnected,
    ReauthRequired,
    ScopeNotAllowed,
    ScopeNotGranted,
    UnknownUser,
    UserSuspended,
)
from broker.models import AccessToken, Connection, Policy, User
from broker.scopes import InvalidScope, gmail_only, normalise, scope_key
from broker.tokens import Issued, TokenService, Want, get_tokens

LAST_USED_EVERY = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class TokenRequest:
    """A parsed, size-checked request body."""

    user: str
    scopes: list[str] | None
    min_ttl: int
    rejected_token: str | None


@dataclass(frozen=True)
class HandedOut:
    """What the API answers on success."""

    token: Issued
    user_id: uuid.UUID
    email: str


class Handout:
    """Decide and hand out one token for an authenticated client."""

    def __init__(self, app: Flask, client: ClientInfo, ip: IPAddress) -> None:
        self.app = app
        self.db = get_db(app)
        self.settings = app.config["BROKER"]
        self.tokens: TokenService = get_tokens(app)
        self.client = client
        self.ip = str(ip)
        self.address = ip
        self.now = get_clock(app)()
        self.user_id: uuid.UUID | None = None
        self.last_used: dt.datetime | None = None
        self.scopes: list[str] = []

    def url(self, path: str, scopes: list[str] | None = None) -> str:
        """Return an absolute broker URL for people (never carrying a secret)."""
        base = str(self.settings.PUBLIC_URL).rstrip("/") + path
        wanted = gmail_only(scopes or [])
        return base + ("?" + urlencode({"scope": " ".join(wanted)}) if wanted else "")

    def audit_refusal(self, exc: BrokerError, session: Session) -> None:
        """Add the audit event of a refusal to `session`."""
        outcome = "error" if exc.status_code >= 500 else "denied"
        metrics.HANDOUTS.labels(outcome=outcome, reason=exc.error).inc()
        audit.record(
            session, action="token.handout", tenant_id=self.client.tenant_id,
            actor_type="client", actor_id=self.client.id, ip=self.ip,
            outcome=outcome, reason=exc.error, subject_user_id=self.user_id, scopes=self.scopes,
            details={k: v for k, v in exc.extras.items() if k == "reason"},
        )

    def refuse(self, exc: BrokerError) -> NoReturn:
        """Audit a refusal in its own transaction, then raise it."""
        with self.db.transaction() as session:
            self.audit_refusal(exc, session)
        raise exc

    def check_ip(self) -> None:
        """Refuse callers outside the tenant's and the client's IP ranges."""
        if not (
            ip_in(self.address, self.client.token_ip_ranges)
            and ip_in(self.address, self.client.allowed_ip_ranges)
        ):
            self.refuse(IpNotAllowed())

    def run(self, req: TokenRequest) -> HandedOut:
        """Apply every check in order, then serve the stored token or refresh it."""
        started = time.monotonic()
        if req.scopes is not None:
            try:
                self.scopes = normalise(req.scopes)
            except InvalidScope as exc:
                self.refuse(InvalidRequest(str(exc)))
            if not self.scopes:
                self.refuse(InvalidRequest("scopes must not be empty"))
            denied = policy.not_allowed(self.scopes, self.client.allowed_scopes)
            if denied:
                self.refuse(ScopeNotAllowed(f"not allowed for this client: {' '.join(denied)}"))
        with self.db.transaction(write=False) as session:
            user, pol, conn, rows = self._read(session, req.user)
            want, issued = self._decide(session, req, user, pol, conn, rows)
        if issued is None:
            try:
                issued = self.tokens.obtain(want, started + self.settings.REFRESH_BUDGET)
            except ReauthRequired as exc:
                exc.extras["reauth_url"] = self.url("/connections/connect", self.scopes)
                self.refuse(exc)
            except ScopeNotGranted as exc:
                exc.extras["consent_url"] = self.url("/connections/connect", self.scopes)
                self.refuse(exc)
            except NotConnected as exc:
                exc.extras["connect_url"] = self.url("/connections/connect", self.scopes)
                self.refuse(exc)
            except BrokerError as exc:
                self.refuse(exc)
        self._record_handout(want, issued, conn_last_used=self.last_used)
        metrics.HANDOUTS.labels(outcome="ok", reason="").inc()
        return HandedOut(issued, user.id, user.email)

    def _read(
        self, session: Session, who: str
    ) -> tuple[User, Policy, Connection | None, dict[str, AccessToken]]:
        """Read user, policy, connection and its tokens in one indexed query."""
        query = (
            select(User, Policy, Connection, AccessToken)
            .join(Policy, Policy.tenant_id == User.tenant_id)
            .outerjoin(Connection, Connection.user_id == User.id)
            .outerjoin(AccessToken, AccessToken.connection_id == Connection.id)
            .where(User.tenant_id == self.client.tenant_id)
        )
        try:
            query = query.where(User.id == uuid.UUID(who))
        except ValueError:
            query = query.where(User.email == who.strip().lower())
        result = session.execute(query).all()
        if not result:
            self.refuse(UnknownUser())
        user, pol, conn, _ = result[0]
        rows = {row[3].scope_key: row[3] for row in result if row[3] is not None}
        return user, pol, conn, rows

    def _decide(
        self, session: Session, req: TokenRequest, user: User, pol: Policy,
        conn: Connection | None, rows: dict[str, AccessToken],
    ) -> tuple[Want, Issued | None]:
        self.user_id = user.id
        self.last_used = conn.last_used_at if conn is not None else None
        if user.status != "active":
            self.refuse(UserSuspended())
        if not policy.login_fresh(user.last_login_at, pol.handout_login_max_age, self.now):
            self.refuse(LoginRequired(login_url=self.url("/auth/login")))
        if req.scopes is None:
            self.scopes = policy.requested_scopes(
                None, self.client.allowed_scopes, conn.granted_scopes if conn else []
            )
        if conn is None or conn.status == "revoked":
            wanted = self.scopes or list(self.client.allowed_scopes)
            self.refuse(NotConnected(connect_url=self.url("/connections/connect", wanted)))
        if conn.status == "needs_reauth":
            self.refuse(ReauthRequired(
                reason=conn.status_reason or "revoked_or_expired",
                reauth_url=self.url("/connections/connect", conn.granted_scopes),
            ))
        missing = policy.not_granted(self.scopes, conn.granted_scopes) if self.scopes else []
        if missing or not self.scopes:
            wanted = missing or list(self.client.allowed_scopes)
            self.refuse(ScopeNotGranted(
                f"not granted by the user: {' '.join(wanted)}",
                consent_url=self.url("/connections/connect", wanted),
            ))
        key = scope_key(self.scopes)
        row = rows.get(key)
        want = Want(
            connection_id=conn.id, tenant_id=conn.tenant_id, user_id=user.id,
            scopes=self.scopes, scope_key=key, min_ttl=req.min_ttl,
            allow_broader=pol.allow_broader_tokens, actor_id=self.client.id, ip=self.ip,
        )
        if row is None:
            return want, None
        try:
            token = self.tokens.open(session, conn.tenant_id, row)
        except SealError:
            self._unreadable(conn)
        issued = Issued(token, row.expires_at, list(row.scopes), row.id)
        if req.rejected_token is not None and hmac.compare_digest(
            req.rejected_token.encode(), token.encode()
        ):
            cooldown = dt.timedelta(seconds=self.settings.REJECTED_TOKEN_COOLDOWN)
            recent = conn.rejected_refresh_at and self.now - conn.rejected_refresh_at < cooldown
            if recent:
                return want, issued if row.expires_at > self.now else None
            want = Want(**{**want.__dict__, "rejected_id": row.id})
            return want, None
        return want, issued if self.tokens.satisfies(row, want, self.now) else None

    def _unreadable(self, conn: Connection) -> NoReturn:
        exc = ReauthRequired(
            "The stored token cannot be opened.", reason="token_unreadable",
            reauth_url=self.url("/connections/connect", conn.granted_scopes),
        )
        with self.db.transaction() as session:
            fresh = session.get(Connection, conn.id)
            if fresh is not None and fresh.status in ("active", "degraded"):
                self.tokens.mark_needs_reauth(
                    session, fresh, "token_unreadable",
                    Want(conn.id, conn.tenant_id, conn.user_id, self.scopes, "", 0, False,
                         actor_id=self.client.id, ip=self.ip),
                )
            self.audit_refusal(exc, session)
        raise exc

    def _record_handout(
        self, want: Want, issued: Issued, conn_last_used: dt.datetime | None
    ) -> None:
        """Audit the hand-out; if this write fails, no token leaves the broker."""
        with self.db.transaction() as session:
            audit.record(
                session, action="token.handout", tenant_id=self.client.tenant_id,
                actor_type="client", actor_id=self.client.id, ip=self.ip,
                subject_user_id=want.user_id, scopes=issued.scopes,
                details={"expires_at": issued.expires_at.isoformat()},
            )
            if conn_last_used is not None and conn_last_used >= self.now - LAST_USED_EVERY:
                return  # written within the minute: skip the contended UPDATE
            session.execute(
                update(Connection)
                .where(Connection.id == want.connection_id,
                       (Connection.last_used_at.is_(None))
                       | (Connection.last_used_at < self.now - LAST_USED_EVERY))
                .values(last_used_at=self.now)
                .execution_options(synchronize_session=False)
            )


def hand_out(client: ClientInfo, ip: IPAddress, req: TokenRequest) -> HandedOut:
    """Run the hand-out for the current app."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return Handout(app, client, ip).run(req)
