"""The hand-out decision of POST /api/v1/token, in DESIGN §7's order, every refusal audited.

The fast path is one connection and two statements: one indexed read of user, policy,
connection and tokens, then the audit insert (carrying `last_used_at` at most once a minute).
On PostgreSQL both run in autocommit on the bare driver (`broker.driver`); on SQLite, in one
transaction. Statements are built once at import, so each request only binds and executes.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

from flask import Flask
from sqlalchemy import Connection as DBConnection
from sqlalchemy import bindparam, or_, select, update

from broker import audit, metrics
from broker.clientip import IPAddress
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
from broker.keys import SealError, access_token_bound
from broker.models import AccessToken, Connection, Policy, User
from broker.scopes import InvalidScope, gmail_only, normalise, scope_key
from broker.tenancy import ClientInfo
from broker.tokens import rules
from broker.tokens.service import Issued, TokenService, Want, get_tokens
from broker.tokens.store import HELD_DESCRIPTION, HELD_REASON

if TYPE_CHECKING:
    from broker.driver import DriverConnection

    Hot = DBConnection | DriverConnection  # what Database.run_hot hands its work

LAST_USED_EVERY = dt.timedelta(minutes=1)

_u, _p = User.__table__.c, Policy.__table__.c
_c, _t = Connection.__table__.c, AccessToken.__table__.c
_READ = (
    select(
        _u.id.label("user_id"), _u.email, _u.status.label("user_status"), _u.last_login_at,
        _p.handout_login_max_age, _p.allow_broader_tokens,
        _c.id.label("connection_id"), _c.status, _c.status_reason, _c.granted_scopes,
        _c.withheld_scopes, _c.last_used_at, _c.rejected_refresh_at, _c.held_at, _c.version,
        _t.id.label("token_id"), _t.scope_key, _t.token, _t.scopes, _t.expires_at,
        _t.obtained_at,
    )
    .select_from(
        User.__table__.join(Policy.__table__, _p.tenant_id == _u.tenant_id)
        .outerjoin(Connection.__table__, _c.user_id == _u.id)
        .outerjoin(AccessToken.__table__, _t.connection_id == _c.id)
    )
    .where(_u.tenant_id == bindparam("tenant_id"))
)
READ_BY_ID = _READ.where(_u.id == bindparam("who"))
READ_BY_EMAIL = _READ.where(_u.email == bindparam("who"))
TOUCH = (
    update(Connection)
    .where(_c.id == bindparam("connection"),
           or_(_c.last_used_at.is_(None), _c.last_used_at < bindparam("before")))
    # updated_at explicitly: the bare driver applies no Python-side onupdate.
    .values(last_used_at=bindparam("used_at"), updated_at=bindparam("used_at"))
)
# On the bare driver (PostgreSQL) the touch rides in the audit insert as a data-modifying CTE:
# no extra round trip, and both commit together.
TOUCH_AND_AUDIT = audit.INSERT.add_cte(TOUCH.cte("touched"))


@dataclass(frozen=True)
class TokenRequest:
    """A parsed, size-checked request body."""

    user: str
    scopes: list[str] | None
    min_ttl: int
    rejected_token: str | None
    # The proxy picks the narrowest scope a Gmail method accepts among those the client may use
    # and the user granted (None when nothing serves); jobs name theirs or get allowed ∩ granted.
    choose: Callable[[list[str]], list[str] | None] | None = None
    wanted: tuple[str, ...] = ()  # what `choose` picks from, for the consent URL when it fails


@dataclass(frozen=True)
class HandedOut:
    """What the API answers on success."""

    token: Issued
    user_id: uuid.UUID
    email: str


@dataclass(frozen=True)
class _StoredRow:
    id: uuid.UUID
    connection_id: uuid.UUID
    scope_key: str
    token: bytes
    scopes: list[str]
    expires_at: dt.datetime
    obtained_at: dt.datetime


@dataclass(frozen=True)
class Serve:
    """The stored token serves: the fast transaction audits the hand-out."""

    want: Want
    issued: Issued
    user: tuple[uuid.UUID, str]
    last_used: dt.datetime | None


@dataclass(frozen=True)
class Refresh:
    """No stored token serves: the slow path refreshes it, then audits the hand-out."""

    want: Want
    user: tuple[uuid.UUID, str]
    last_used: dt.datetime | None


@dataclass(frozen=True)
class Unreadable:
    """The stored token does not open: the connection needs the user again."""

    want: Want
    granted: list[str]


@dataclass(frozen=True)
class Refuse:
    """A refusal, already audited in the fast transaction."""

    error: BrokerError


@dataclass(frozen=True)
class Checked:
    """Every check passed; nothing to serve (a proxy token is issued, no Google token)."""

    want: Want
    user: tuple[uuid.UUID, str]


Decision = Serve | Refresh | Unreadable | Refuse | Checked


def refusal_details(exc: BrokerError) -> dict[str, str]:
    """Return what an audited refusal records: its reason, and why a request was malformed.

    An `invalid_request` keeps its description only up to the first quote or colon, where the
    caller's own input would begin (it may hold anything, even a pasted token).
    """
    details = {k: str(v) for k, v in exc.extras.items() if k == "reason"}
    if isinstance(exc, InvalidRequest):
        details["problem"] = re.split(r"[:'\"]", exc.description, maxsplit=1)[0].strip()[:80]
    return details


class Handout:
    """Decide and hand out one token for an authenticated client."""

    def __init__(
        self, app: Flask, client: ClientInfo, ip: IPAddress,
        credential: dict[str, str] | None = None, action: str = "token.handout",
    ) -> None:
        self.tokens: TokenService = get_tokens(app)
        self.db = self.tokens.db
        self.settings = self.tokens.settings
        self.client = client
        self.ip = str(ip)
        self.address = ip
        # What the audit records of how the client proved itself (a certificate's thumbprint).
        self.credential = credential or {}
        # The audit action, and what the caller adds to each row (the proxy's method id).
        self.action = action
        self.details: dict[str, Any] = {}
        self.checks_only = False
        self.now = self.tokens.clock()
        self.user_id: uuid.UUID | None = None
        self.scopes: list[str] = []

    def url(self, path: str, scopes: list[str] | None = None) -> str:
        """Return an absolute broker URL for people (never carrying a secret)."""
        base = str(self.settings.PUBLIC_URL).rstrip("/") + path
        wanted = gmail_only(scopes or [])
        return base + ("?" + urlencode({"scope": " ".join(wanted)}) if wanted else "")

    def _audit_refusal(self, conn: Hot, exc: BrokerError, now: dt.datetime) -> None:
        outcome = "error" if exc.status_code >= 500 else "denied"
        audit.insert_event(
            conn, now=now, action=self.action, tenant_id=self.client.tenant_id,
            actor_type="client", actor_id=self.client.id, ip=self.ip,
            outcome=outcome, reason=exc.error, subject_user_id=self.user_id, scopes=self.scopes,
            details={**self.details, **refusal_details(exc), **self.credential},
        )

    def _count_refusal(self, exc: BrokerError) -> None:
        outcome = "error" if exc.status_code >= 500 else "denied"
        metrics.HANDOUTS.labels(outcome=outcome, reason=exc.error).inc()

    def refuse(self, exc: BrokerError) -> NoReturn:
        """Audit a refusal in its own transaction, then raise it."""
        now = self.tokens.clock()
        self.db.run(lambda conn: self._audit_refusal(conn, exc, now))
        self._count_refusal(exc)
        raise exc

    def check_ip(self) -> None:
        """Refuse callers outside the tenant's and the client's IP ranges."""
        if not self.client.admits(self.address):
            self.refuse(IpNotAllowed())

    def check(self, req: TokenRequest) -> tuple[uuid.UUID, str]:
        """Apply every check of `run` and audit the outcome, without touching a token."""
        self.checks_only = True
        self._check_scopes(req)
        step = self.db.run_hot(lambda conn: self._fast(conn, req))
        if isinstance(step, Refuse):
            self._count_refusal(step.error)
            raise step.error
        assert isinstance(step, Checked)  # noqa: S101 - _decide stops there in this mode
        return step.user

    def _check_scopes(self, req: TokenRequest) -> None:
        if req.scopes is not None:
            try:
                self.scopes = normalise(req.scopes)
            except InvalidScope as exc:
                self.refuse(InvalidRequest(str(exc)))
            if not self.scopes:
                self.refuse(InvalidRequest("scopes must not be empty"))
            denied = rules.not_allowed(self.scopes, self.client.allowed_scopes)
            if denied:
                self.refuse(ScopeNotAllowed(f"not allowed for this client: {' '.join(denied)}"))

    def run(self, req: TokenRequest) -> HandedOut:
        """Apply every check in order, then serve the stored token or refresh it."""
        started = time.monotonic()  # the refresh budget is a duration, not a wall-clock time
        self._check_scopes(req)
        # Autocommit: the fast path's writes are the audit insert, one atomic statement, and an
        # idempotent last_used_at update made before it, so BEGIN/COMMIT would only add trips.
        step = self.db.run_hot(lambda conn: self._fast(conn, req))
        if isinstance(step, Refuse):
            self._count_refusal(step.error)
            raise step.error
        if isinstance(step, Unreadable):
            self._unreadable(step.want, step.granted)
        if isinstance(step, Checked):
            raise AssertionError("run() never stops at the checks")
        if isinstance(step, Serve):
            issued = step.issued
        else:
            issued = self._slow(step.want, started)
            now = self.tokens.clock()  # the refresh took a while: audit when it ended
            # One statement (touch and audit together on PostgreSQL), in autocommit like the
            # fast path's: BEGIN and COMMIT would only add round trips.
            self.db.run_hot(
                lambda conn: self._record_handout(conn, step.want, issued, step.last_used, now)
            )
        metrics.HANDOUTS.labels(outcome="ok", reason="").inc()
        return HandedOut(issued, *step.user)

    def _fast(self, conn: Hot, req: TokenRequest) -> Decision:
        """Read, decide and audit in the caller's transaction (which `Database.run` may retry)."""
        try:
            who: Any = uuid.UUID(req.user)
            query = READ_BY_ID
        except ValueError:
            who, query = req.user.strip().lower(), READ_BY_EMAIL
        rows = conn.execute(query, {"tenant_id": self.client.tenant_id, "who": who}).all()
        try:
            step = self._decide(conn, req, rows)
        except BrokerError as exc:
            self._audit_refusal(conn, exc, self.now)
            return Refuse(exc)
        if isinstance(step, Serve):
            self._record_handout(conn, step.want, step.issued, step.last_used, self.now)
        elif isinstance(step, Checked):
            self._record_check(conn, step.want)
        return step

    def _decide(
        self, conn: Hot, req: TokenRequest, rows: Sequence[Any]
    ) -> Serve | Refresh | Unreadable | Checked:
        if not rows:
            raise UnknownUser()
        first = rows[0]
        self.user_id = first.user_id
        if first.user_status == "suspended":
            raise UserSuspended()
        if first.user_status != "active":  # invited: the person has never signed in
            raise LoginRequired("The user has not signed in yet.",
                                login_url=self.url("/auth/login"))
        if not rules.login_fresh(first.last_login_at, first.handout_login_max_age, self.now):
            raise LoginRequired(login_url=self.url("/auth/login"))
        # What the user withholds was granted at Google but is not the jobs' to use.
        withheld: list[str] = first.withheld_scopes or []
        granted = rules.usable(first.granted_scopes or [], withheld)
        if req.scopes is None and req.choose is not None:
            usable = rules.requested_scopes(None, self.client.allowed_scopes, granted)
            self.scopes = req.choose(usable) or []  # none: refused below, as not granted
        elif req.scopes is None:
            self.scopes = rules.requested_scopes(None, self.client.allowed_scopes, granted)
        if first.connection_id is None or first.status == "revoked":
            wanted = self.scopes or list(self.client.allowed_scopes)
            raise NotConnected(connect_url=self.url("/connections/connect", wanted))
        if first.status == "needs_reauth":
            raise ReauthRequired(
                reason=first.status_reason or "revoked_or_expired",
                reauth_url=self.url("/connections/connect", granted),
            )
        if first.held_at is not None:
            raise ReauthRequired(HELD_DESCRIPTION, reason=HELD_REASON,
                                 reauth_url=self.url("/connections/connect", granted))
        missing = rules.not_granted(self.scopes, granted) if self.scopes else []
        if missing or not self.scopes:
            wanted = missing or list(req.wanted or self.client.allowed_scopes)
            held = rules.withheld_among(wanted, withheld)
            absent = sorted(set(wanted) - set(held))
            said = [f"withheld by the user: {' '.join(held)}"] if held else []
            if absent:
                said.append(f"not granted by the user: {' '.join(absent)}")
            raise ScopeNotGranted(
                "; ".join(said), consent_url=self.url("/connections/connect", wanted)
            )
        key = scope_key(self.scopes)
        want = Want(
            connection_id=first.connection_id, tenant_id=self.client.tenant_id,
            user_id=first.user_id, scopes=self.scopes, scope_key=key, min_ttl=req.min_ttl,
            allow_broader=first.allow_broader_tokens, actor_id=self.client.id, ip=self.ip,
            seen_version=first.version,
        )
        user, last_used = (first.user_id, first.email), first.last_used_at
        if self.checks_only:
            return Checked(want, user)
        found = next((r for r in rows if r.scope_key == key), None)
        if found is None:
            return Refresh(want, user, last_used)
        row = _StoredRow(found.token_id, found.connection_id, found.scope_key, found.token,
                         found.scopes, found.expires_at, found.obtained_at)
        if not self.tokens.admissible(row, want.allow_broader):
            return Refresh(want, user, last_used)  # as if absent: never opened, never served
        try:
            token = self.tokens.keys().open_on(
                conn, want.tenant_id, row.id, "access_token", row.token,
                bound=access_token_bound(row.connection_id, row.scope_key),
            ).decode()
        except SealError:
            return Unreadable(want, granted)
        issued = Issued(token, row.expires_at, list(row.scopes), row.id)
        if req.rejected_token is not None and hmac.compare_digest(
            req.rejected_token.encode(), token.encode()
        ):
            cooldown = dt.timedelta(seconds=self.settings.REJECTED_TOKEN_COOLDOWN)
            rejected_at = first.rejected_refresh_at
            if rejected_at is None or self.now - rejected_at >= cooldown:
                return Refresh(Want(**{**want.__dict__, "rejected_id": row.id}), user, last_used)
            # Reported again within the cooldown: serve it while valid rather than loop.
            if row.expires_at > self.now:
                return Serve(want, issued, user, last_used)
            return Refresh(want, user, last_used)
        if self.tokens.satisfies(row, want, self.now):
            return Serve(want, issued, user, last_used)
        return Refresh(want, user, last_used)

    def _slow(self, want: Want, started: float) -> Issued:
        """Refresh under the lease, outside any transaction; audit a refusal on its own."""
        try:
            return self.tokens.obtain(want, started + self.settings.REFRESH_BUDGET)
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

    def _unreadable(self, want: Want, granted: list[str]) -> NoReturn:
        exc = ReauthRequired(
            "The stored token cannot be opened.", reason="token_unreadable",
            reauth_url=self.url("/connections/connect", granted),
        )
        with self.db.transaction() as session:
            fresh = session.get(Connection, want.connection_id)
            if fresh is not None and fresh.status in ("active", "degraded"):
                self.tokens.mark_needs_reauth(session, fresh, "token_unreadable", want)
            self._audit_refusal(session.connection(), exc, self.tokens.clock())
        self._count_refusal(exc)
        raise exc

    def _record_check(self, conn: Hot, want: Want) -> None:
        """Audit checks that passed (a proxy token issued): no token, no last use."""
        conn.execute(audit.INSERT, audit.event_values({
            "action": self.action, "tenant_id": self.client.tenant_id,
            "actor_type": "client", "actor_id": self.client.id, "ip": self.ip,
            "subject_user_id": want.user_id, "scopes": want.scopes,
            "details": {**self.details, **self.credential},
        }, self.now))

    def _record_handout(
        self, conn: Hot, want: Want, issued: Issued, last_used: dt.datetime | None,
        now: dt.datetime,
    ) -> None:
        """Audit the hand-out at `now`; if this write fails, no token leaves the broker."""
        event = audit.event_values({
            "action": self.action, "tenant_id": self.client.tenant_id,
            "actor_type": "client", "actor_id": self.client.id, "ip": self.ip,
            "subject_user_id": want.user_id, "scopes": issued.scopes,
            "details": {**self.details, "expires_at": issued.expires_at.isoformat(),
                        **self.credential},
        }, now)
        before = self.now - LAST_USED_EVERY
        if last_used is not None and last_used >= before:  # written within the minute
            conn.execute(audit.INSERT, event)
            return
        touch = {"connection": want.connection_id, "before": before, "used_at": self.now}
        if not isinstance(conn, DBConnection):  # the bare driver, on PostgreSQL
            conn.execute(TOUCH_AND_AUDIT, {**touch, **event})
        else:  # SQLAlchemy would read the audit values as SET columns of the CTE's UPDATE
            conn.execute(TOUCH, touch)
            conn.execute(audit.INSERT, event)
