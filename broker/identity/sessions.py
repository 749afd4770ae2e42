"""Server-side browser sessions and OAuth transactions; the database keeps only hashes."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker.clientip import IPAddress, ip_in, parse_ip
from broker.keys import KeyService, digest, new_secret
from broker.models import BrowserSession, OAuthTransaction, Policy, User

SESSION_COOKIE = "broker_session"
BINDING_COOKIE = "broker_binding"
TRANSACTION_TTL = dt.timedelta(minutes=10)
# last_seen_at is written at most this often: idle timeouts are minutes, not seconds.
TOUCH_INTERVAL = dt.timedelta(seconds=60)
TIME_ENDS = frozenset({"expired", "idle"})
MAX_SECRET_LENGTH = 200


def well_formed(value: str | None) -> bool:
    """Say whether a cookie or state value could be one we issued."""
    return bool(value) and len(value or "") <= MAX_SECRET_LENGTH and (value or "").isascii()


def cookie_name(base: str, https: bool) -> str:
    """Return a cookie's name, `__Host-` prefixed on HTTPS."""
    return f"__Host-{base}" if https else base


@dataclass
class SessionState:
    """What a browser's session cookie names: a valid session, an ended one, or nothing."""

    browser_session: BrowserSession | None = None
    user: User | None = None
    policy: Policy | None = None
    ended: str | None = None

    @property
    def valid(self) -> bool:
        """Say whether the session may be used for this request."""
        return self.browser_session is not None and self.ended is None

    @property
    def may_resume(self) -> bool:
        """Say whether a silent sign-in may re-establish it (ended by time, keep_connected)."""
        return (
            self.ended in TIME_ENDS
            and self.policy is not None
            and self.policy.keep_connected
            and self.user is not None
            and self.user.status == "active"
        )


def end_reason(
    browser_session: BrowserSession, user: User, policy: Policy, *, now: dt.datetime,
    ip: IPAddress,
) -> str | None:
    """Return why a session is no longer valid (DESIGN §6), or None while it is."""
    if browser_session.ended_at is not None:
        return browser_session.end_reason or "logout"
    if user.status != "active":
        return "suspended"
    max_age = dt.timedelta(seconds=policy.session_max_age)
    if now >= min(browser_session.expires_at, browser_session.created_at + max_age):
        return "expired"
    if now - browser_session.last_seen_at >= dt.timedelta(seconds=policy.session_idle_timeout):
        return "idle"
    if not ip_in(ip, policy.login_ip_ranges):
        return "policy"
    if policy.lock_session_to_ip and parse_ip(browser_session.ip) != ip:
        return "policy"
    return None


def open_session(
    db: Session, user: User, policy: Policy, *, now: dt.datetime, ip: IPAddress,
    user_agent: str,
) -> str:
    """Create a session with a fresh id for a user who just signed in; return the cookie value."""
    token = new_secret()
    db.add(
        BrowserSession(
            id=uuid.uuid4(), token_hash=digest(token), user_id=user.id, created_at=now,
            last_seen_at=now, expires_at=now + dt.timedelta(seconds=policy.session_max_age),
            ip=str(ip), user_agent=user_agent[:400],
        )
    )
    return token


def load_session(
    db: Session, token: str | None, *, now: dt.datetime, ip: IPAddress
) -> SessionState:
    """Find the session a cookie names, check it on this request and end it when it lapsed."""
    if not well_formed(token):
        return SessionState()
    row = db.execute(
        select(BrowserSession, User, Policy)
        .join(User, User.id == BrowserSession.user_id)
        .join(Policy, Policy.tenant_id == User.tenant_id)
        .where(BrowserSession.token_hash == digest(str(token)))
    ).first()
    if row is None:
        return SessionState()
    browser_session, user, policy = row
    reason = end_reason(browser_session, user, policy, now=now, ip=ip)
    if reason is None:
        if now - browser_session.last_seen_at >= TOUCH_INTERVAL:
            browser_session.last_seen_at = now
            user.last_seen_at = now
        return SessionState(browser_session, user, policy)
    if browser_session.ended_at is None:
        browser_session.ended_at = now
        browser_session.end_reason = reason
    return SessionState(browser_session, user, policy, ended=reason)


def end_session(db: Session, session_id: uuid.UUID, reason: str, now: dt.datetime) -> None:
    """End one session now, unless it has already ended."""
    db.execute(
        update(BrowserSession)
        .where(BrowserSession.id == session_id, BrowserSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )


@dataclass(frozen=True)
class Started:
    """The secrets of a new OAuth transaction, for the authorization URL only."""

    state: str
    nonce: str
    code_verifier: str


class TransactionRefused(Exception):
    """A callback whose state cannot be used; `reason` is the audited code."""

    def __init__(self, reason: str, transaction: OAuthTransaction | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Read now: the refused transaction rolls back and expires the row.
        self.tenant_id = transaction.tenant_id if transaction else None
        self.user_id = transaction.user_id if transaction else None


def begin(
    db: Session, keys: KeyService, *, purpose: str, binding: str, now: dt.datetime,
    tenant_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None,
    scopes: list[str] | None = None, prompt: str | None = None, next_url: str | None = None,
    signin_tenant_id: uuid.UUID | None = None,
) -> Started:
    """Store a transaction bound to this browser; the PKCE verifier is sealed."""
    started = Started(new_secret(), new_secret(), secrets.token_urlsafe(64))
    state_hash = digest(started.state)
    # Transactions are short-lived; sweeping old ones here keeps the table small.
    stale = now - dt.timedelta(hours=1)
    db.execute(delete(OAuthTransaction).where(OAuthTransaction.expires_at < stale))
    db.add(
        OAuthTransaction(
            state_hash=state_hash, browser_binding_hash=digest(binding), purpose=purpose,
            code_verifier=keys.seal(
                db, tenant_id, state_hash, "code_verifier", started.code_verifier.encode()
            ),
            nonce=started.nonce, requested_scopes=list(scopes or []), tenant_id=tenant_id,
            user_id=user_id, signin_tenant_id=signin_tenant_id, prompt=prompt, next=next_url,
            created_at=now,
            expires_at=now + TRANSACTION_TTL,
        )
    )
    return started


def consume(
    db: Session, keys: KeyService, state: str | None, *, purpose: str, binding: str | None,
    now: dt.datetime,
) -> tuple[OAuthTransaction, str]:
    """Use a transaction once, atomically; return it with its PKCE verifier or refuse."""
    if not well_formed(state):
        raise TransactionRefused("bad_state")
    transaction = db.get(OAuthTransaction, digest(str(state)))
    if transaction is None or transaction.purpose != purpose:
        raise TransactionRefused("bad_state")
    if transaction.used_at is not None:
        raise TransactionRefused("state_replayed", transaction)
    expected = transaction.browser_binding_hash.encode()
    if not well_formed(binding) or not hmac.compare_digest(expected, digest(str(binding)).encode()):
        raise TransactionRefused("foreign_browser", transaction)
    if now >= transaction.expires_at:
        raise TransactionRefused("state_expired", transaction)
    claimed = db.execute(
        update(OAuthTransaction)
        .where(
            OAuthTransaction.state_hash == transaction.state_hash,
            OAuthTransaction.used_at.is_(None),
        )
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise TransactionRefused("state_replayed", transaction)
    verifier = keys.open(
        db, transaction.tenant_id, transaction.state_hash, "code_verifier",
        transaction.code_verifier,
    )
    return transaction, verifier.decode()
