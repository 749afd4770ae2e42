"""The single-flight refresh: claim the lease, call Google outside any transaction, CAS (§8)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection as DBConnection
from sqlalchemy import Update, bindparam, insert, literal_column, null, or_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from broker import audit, metrics, webhooks
from broker.clock import Clock, Sleep, backoff
from broker.config import Settings
from broker.db import Database, retry_deadlocks
from broker.errors import (
    BrokerError,
    BrokerMisconfigured,
    ReauthRequired,
    ScopeNotGranted,
    UpstreamUnavailable,
)
from broker.google import Failure, Google, GoogleError, NotConfigured, TokenResponse
from broker.keys import SealError, access_token_bound, refresh_token_ids
from broker.models import AccessToken, Connection
from broker.tokens import rules
from broker.tokens.store import Issued, Keys, TokenStore, Want, event_payload

if TYPE_CHECKING:
    from broker.driver import DriverConnection

    Hot = DBConnection | DriverConnection  # what Database.run_hot hands its work

log = logging.getLogger(__name__)
# Our Google call must end this long before the lease does, so nobody else starts meanwhile.
LEASE_MARGIN = 0.5
MISCONFIGURED_PAUSE = 5.0

# Core statements built once: the refresh path binds and executes them, no ORM unit of work.
_c, _t = Connection.__table__.c, AccessToken.__table__.c
# The lease, claimed in one statement while the connection is as the hand-out read it: same
# version (no refresh, consent or RISC action since), live, not held, not leased, not backing
# off. Anything else, and the claim falls back to reading the row (`Refresher._claim`).
CLAIM_SEEN = (
    update(Connection)
    .where(
        _c.id == bindparam("connection"),
        _c.version == bindparam("seen"),
        # Inline, not bound: the bare driver binds only the parameters it is given.
        _c.status.in_([literal_column("'active'"), literal_column("'degraded'")]),
        _c.held_at.is_(None),
        or_(_c.refresh_lease_until.is_(None), _c.refresh_lease_until <= bindparam("now")),
        or_(_c.next_retry_at.is_(None), _c.next_retry_at <= bindparam("now")),
    )
    # updated_at explicitly: the bare driver applies no Python-side onupdate.
    .values(refresh_lease_until=bindparam("until"), refresh_lease_owner=bindparam("owner"),
            updated_at=bindparam("now"))
    .returning(_c.version, _c.refresh_token, _c.status, _c.consecutive_failures,
               _c.created_at, _c.last_refresh_at, _c.last_used_at)
)
RELEASE = (
    update(Connection)
    .where(_c.id == bindparam("connection"), _c.refresh_lease_owner == bindparam("owner"))
    .values(refresh_lease_until=null(), refresh_lease_owner=null(), updated_at=bindparam("now"))
)
STORE_TOKEN = (
    update(AccessToken)
    .where(_t.connection_id == bindparam("connection"), _t.scope_key == bindparam("key"))
    .values(id=bindparam("token_id"), token=bindparam("sealed"), scopes=bindparam("granted"),
            expires_at=bindparam("expires"), obtained_at=bindparam("obtained"))
    .returning(_t.id)
)
# The worker's claim: rows it holds locked, leased together.
LEASE_LOCKED = (
    update(Connection)
    .where(_c.id.in_(bindparam("ids", expanding=True)))
    .values(refresh_lease_until=bindparam("until"), refresh_lease_owner=bindparam("owner"))
)
INSERT_TOKEN = insert(AccessToken).values(
    connection_id=bindparam("connection"), scope_key=bindparam("key"),
    id=bindparam("token_id"), token=bindparam("sealed"), scopes=bindparam("granted"),
    expires_at=bindparam("expires"), obtained_at=bindparam("obtained"),
)


@functools.cache
def _swap(columns: tuple[str, ...]) -> Update:
    """Return the compare-and-swap that stores a refresh, setting `columns` (built once each)."""
    return (
        update(Connection)
        .where(_c.id == bindparam("connection"), _c.version == bindparam("seen"),
               _c.refresh_lease_owner == bindparam("owner"))
        .values({name: bindparam("set_" + name) for name in columns})
        .returning(_c.version)
    )


class Locked(Protocol):
    """What the worker's claim reads of a connection it holds locked."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    version: int
    refresh_token: bytes | None
    status: str
    consecutive_failures: int
    created_at: dt.datetime
    last_refresh_at: dt.datetime | None
    last_used_at: dt.datetime | None
    refresh_lease_until: dt.datetime | None


@dataclass(frozen=True)
class Lease:
    """A connection's refresh lease held by this process, with what the refresh needs."""

    version: int
    refresh_token: str = field(repr=False)
    status: str
    failures: int
    created_at: dt.datetime
    last_refresh_at: dt.datetime | None
    last_used_at: dt.datetime | None
    # Monotonic: a budget measures a duration, which a wall clock (or a test's) must not bend.
    until: float


@dataclass(frozen=True)
class Busy:
    """Another holder refreshes now, or Google failed recently (then until when to back off)."""

    backoff_until: dt.datetime | None = None


class Refresher:
    """Obtain tokens: re-read, claim the lease, refresh outside any transaction, CAS."""

    def __init__(
        self, store: TokenStore, *, db: Database, keys: Keys, google: Callable[[], Google],
        settings: Settings, clock: Clock, sleep: Sleep, owner: str,
    ) -> None:
        self.store = store
        self.db = db
        self.keys = keys
        self._google = google
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.owner = owner
        self._events: dict[uuid.UUID, threading.Event] = {}
        self._lock = threading.Lock()
        self._paused_until = 0.0  # monotonic

    @property
    def google(self) -> Google:
        """Return the Google client; an unconfigured broker cannot refresh."""
        try:
            return self._google()
        except NotConfigured:
            raise BrokerMisconfigured("Google is not configured on this broker.") from None

    def obtain(self, want: Want, deadline: float) -> Issued:
        """Return a token for `want` by `deadline` (monotonic), refreshing at most once."""
        if want.seen_version is not None and time.monotonic() >= self._paused_until:
            lease = self._claim_seen(want, want.seen_version)
            if lease is not None:
                issued = self._hold(want, lease, deadline)
                if issued is not None:
                    return issued
        while True:
            step = self._claim(want)
            if isinstance(step, Issued):
                return step
            if isinstance(step, Lease):
                issued = self._hold(want, step, deadline)
                if issued is not None:
                    return issued
                continue
            remaining = deadline - time.monotonic()
            if step.backoff_until is not None or remaining <= 0:
                retry = 1.0
                if step.backoff_until is not None:
                    retry = (step.backoff_until - self.clock()).total_seconds()
                return self.store.fallback(want, retry, "Google failed recently; retry later.")
            self._wait(want.connection_id, remaining)

    def _wait(self, connection_id: uuid.UUID, remaining: float) -> None:
        with self._lock:
            event = self._events.get(connection_id)
        if event is not None:
            event.wait(min(remaining, self.settings.REFRESH_BUDGET))
        else:
            self.sleep(min(remaining, 0.04 + random.uniform(0, 0.04)))  # noqa: S311 - jitter

    def _claim_seen(self, want: Want, seen: int) -> Lease | None:
        """Claim the lease in one statement if the row is as the hand-out read it; else None.

        On PostgreSQL the statement runs alone in autocommit on the bare driver (one round
        trip, as the fast path's): the claim must be committed before Google is called anyway.
        """
        now = self.clock()
        budget = self.settings.REFRESH_BUDGET
        keys = self.keys()

        def work(conn: Hot) -> tuple[Any, bytes | None] | None:
            rows = conn.execute(CLAIM_SEEN, {
                "connection": want.connection_id, "seen": seen, "now": now,
                "until": now + dt.timedelta(seconds=budget), "owner": self.owner,
            }).all()
            if not rows:
                return None
            try:
                token = keys.open_on(conn, want.tenant_id, want.connection_id, "refresh_token",
                                     rows[0].refresh_token or b"")
            except SealError:
                token = None
            except BaseException:
                # The claim is committed already: give it back, so a key service that comes
                # back finds the row free rather than leased by a request that failed.
                conn.execute(RELEASE, {"connection": want.connection_id, "owner": self.owner,
                                       "now": now})
                raise
            return rows[0], token

        claimed = self.db.run_hot(work)
        if claimed is None:
            return None
        row, token = claimed
        if token is None:  # the claim stands: mark the row as `_claim` would, under it
            with self.db.transaction() as session:
                held = session.get(Connection, want.connection_id, populate_existing=True)
                if held is not None:
                    self.store.mark_needs_reauth(session, held, "token_unreadable", want)
            raise ReauthRequired(
                "The stored refresh token cannot be opened.", reason="token_unreadable"
            )
        return Lease(row.version, token.decode(), row.status, row.consecutive_failures,
                     row.created_at, row.last_refresh_at, row.last_used_at,
                     time.monotonic() + budget)

    def _claim(self, want: Want) -> Issued | Lease | Busy:
        now = self.clock()
        with self.db.transaction(write=False) as session:
            conn, row = self.store.read(session, want)
            if row is not None and self.store.satisfies(row, want, now):
                return self.store.issued(session, want, row)
            if conn.next_retry_at is not None and conn.next_retry_at > now:
                return Busy(backoff_until=conn.next_retry_at)
            if conn.refresh_lease_until is not None and conn.refresh_lease_until > now:
                return Busy()
            if time.monotonic() < self._paused_until:
                raise BrokerMisconfigured()
        seconds = self.settings.REFRESH_BUDGET
        with self.db.transaction() as session:
            claimed = session.execute(
                update(Connection)
                .where(
                    Connection.id == want.connection_id,
                    Connection.status.in_(("active", "degraded")),
                    Connection.held_at.is_(None),
                    or_(
                        Connection.refresh_lease_until.is_(None),
                        Connection.refresh_lease_until <= now,
                    ),
                )
                .values(
                    refresh_lease_until=now + dt.timedelta(seconds=seconds),
                    refresh_lease_owner=self.owner,
                )
                .returning(Connection.version)
                .execution_options(synchronize_session=False)
            ).one_or_none()
            if claimed is None:
                return Busy()
            held = session.get(Connection, want.connection_id, populate_existing=True)
            if held is None:  # our UPDATE locks the row, so never; the next read says why
                return Busy()
            lease = self._open(session, held, claimed.version, want)
            if lease is not None:
                return lease
        # Raised once the transaction that marked the connection needs_reauth has committed.
        raise ReauthRequired(
            "The stored refresh token cannot be opened.", reason="token_unreadable"
        )

    def _open(
        self, session: Session, row: Locked, version: int, want: Want
    ) -> Lease | None:
        """Open a claimed row's refresh token; one that will not open marks it needs_reauth."""
        try:
            refresh_token = self.keys().open(
                session, row.tenant_id, row.id, "refresh_token", row.refresh_token or b""
            ).decode()
        except SealError:
            # The ORM object to mark: the row itself when it is one (the identity map's).
            held = session.get(Connection, row.id)
            if held is not None:
                self.store.mark_needs_reauth(session, held, "token_unreadable", want)
            return None
        return Lease(version, refresh_token, row.status, row.consecutive_failures,
                     row.created_at, row.last_refresh_at, row.last_used_at,
                     time.monotonic() + self.settings.REFRESH_BUDGET)

    def claim_locked(
        self, session: Session, rows: Sequence[Locked], now: dt.datetime
    ) -> list[Lease | None]:
        """Claim the leases of rows the caller holds locked (the worker), in one statement;
        None for a row leased meanwhile or whose token will not open (marked needs_reauth)."""
        leases = [
            None if row.refresh_lease_until is not None and row.refresh_lease_until > now
            else self._open(session, row, row.version, Want(
                row.id, row.tenant_id, row.user_id, [], "", 0, False))
            for row in rows
        ]
        ids = [row.id for row, lease in zip(rows, leases, strict=True) if lease is not None]
        if ids:
            session.connection().execute(LEASE_LOCKED, {
                "ids": ids, "owner": self.owner,
                "until": now + dt.timedelta(seconds=self.settings.REFRESH_BUDGET)})
        return leases

    def refresh_held(self, want: Want, lease: Lease) -> bool:
        """Refresh under a lease claimed by `claim_locked`; say whether a token was stored."""
        try:
            return self._hold(want, lease, lease.until) is not None
        except BrokerError as exc:
            log.info("worker refresh refused: %s", exc.error, extra={"event": "worker"})
            return False

    def _hold(self, want: Want, lease: Lease, deadline: float) -> Issued | None:
        event = threading.Event()
        with self._lock:
            self._events[want.connection_id] = event
        try:
            stop = min(deadline, lease.until - LEASE_MARGIN)
            started = time.monotonic()
            try:
                answer = self._call(lease.refresh_token, want.scopes, stop)
            except GoogleError as exc:
                return self._failed(want, lease, exc, _ms_since(started))
            extra = rules.broader(answer.scopes, want.scopes)
            if extra and not want.allow_broader:
                self._release(want, lease)
                raise UpstreamUnavailable(
                    "Google answered a broader scope than asked and this tenant does not allow "
                    "broader tokens.", headers={"Retry-After": "60"},
                )
            return self._store(want, lease, answer, _ms_since(started))
        finally:
            with self._lock:
                self._events.pop(want.connection_id, None)
            event.set()

    def _call(self, refresh_token: str, scopes: list[str], stop: float) -> TokenResponse:
        """Call the token endpoint, retrying transient failures with jitter until `stop`."""
        attempt = 0
        while True:
            timeout = min(stop - time.monotonic(), self.settings.GOOGLE_TIMEOUT)
            if timeout < 0.1:
                raise GoogleError(Failure.TRANSIENT, error="budget_exhausted")
            try:
                with metrics.UPSTREAM_SECONDS.labels(endpoint="token").time():
                    answer = self.google.refresh(refresh_token, scopes, timeout=timeout)
                metrics.REFRESHES.labels(result="ok").inc()
                return answer
            except GoogleError as exc:
                metrics.REFRESHES.labels(result=exc.kind).inc()
                if exc.kind is not Failure.TRANSIENT:
                    raise
                attempt += 1
                delay = exc.retry_after or backoff(attempt, base=0.1, cap=2.0)
                if time.monotonic() + delay + 0.1 >= stop:
                    raise
                # Said, because Google may have minted a token for the failed call too.
                log.info("google token call failed (%s %s); retrying in %.1f s",
                         exc.error[:60], exc.cause or exc.status, delay,
                         extra={"event": "refresh_retry"})
                self.sleep(delay)

    def _store(self, want: Want, lease: Lease, answer: TokenResponse, google_ms: int) -> Issued:
        now = self.clock()
        expires_at = now + dt.timedelta(seconds=answer.expires_in)
        token_id = uuid.uuid4()
        keys = self.keys()
        values: dict[str, object] = {
            "version": lease.version + 1, "refresh_lease_until": None,
            "refresh_lease_owner": None, "last_refresh_at": now, "status": "active",
            "status_reason": None, "consecutive_failures": 0, "next_retry_at": None,
            "updated_at": now,  # explicitly: the bare driver applies no Python-side onupdate
        }
        if want.rejected_id is not None:
            values["rejected_refresh_at"] = now
        bound = access_token_bound(want.connection_id, want.scope_key)
        event = audit.event_values({
            "action": "token.refresh", "tenant_id": want.tenant_id,
            "actor_type": want.actor_type, "actor_id": want.actor_id,
            "subject_user_id": want.user_id, "ip": want.ip, "scopes": answer.scopes,
            "details": {"reason": "rejected_token" if want.rejected_id else "expiring",
                        "google_ms": google_ms},
        }, now)
        token: dict[str, object] = {
            "connection": want.connection_id, "key": want.scope_key, "token_id": token_id,
            "granted": answer.scopes, "expires": expires_at, "obtained": now,
        }

        def swap(conn: Hot) -> bool:
            """Compare-and-swap the connection, store the token, audit: one transaction."""
            if not conn.execute(_swap(tuple(values)), {
                "connection": want.connection_id, "seen": lease.version, "owner": self.owner,
                **{"set_" + k: v for k, v in values.items()},
            }).all():
                return False
            # Our CAS holds the connection's row lock: nobody else writes its tokens now.
            if not conn.execute(STORE_TOKEN, token).all():
                conn.execute(INSERT_TOKEN, token)
            conn.execute(audit.INSERT, event)
            return True

        def hot(conn: Hot) -> bool:
            with conn.connection.transaction():  # psycopg's: BEGIN, then COMMIT or ROLLBACK
                return swap(conn)

        def in_session(conn: DBConnection) -> bool:
            # Seals not made yet (SQLite's, which reserve a nonce block) and the webhook's
            # rows need an ORM session on this same transaction.
            session = Session(bind=conn)
            try:
                if answer.refresh_token and rotated is None:
                    values["refresh_token"] = keys.seal(
                        session, want.tenant_id, want.connection_id, "refresh_token",
                        answer.refresh_token.encode(),
                    )
                if sealed is None:
                    token["sealed"] = keys.seal(
                        session, want.tenant_id, token_id, "access_token",
                        answer.access_token.encode(), bound=bound,
                    )
                if not swap(conn):
                    return False
                if lease.status == "degraded":
                    webhooks.enqueue(session, want.tenant_id, "connection.recovered",
                                     event_payload(want.connection_id, want.user_id))
                    session.flush()
                return True
            finally:
                session.close()

        if answer.refresh_token:  # never overwrite a refresh token with nothing
            values.update(refresh_token_ids(answer.refresh_token))
        # The common case on PostgreSQL: both seals from the reserved nonce block, no webhook:
        # the bare driver in one explicit transaction, as few round trips as statements.
        sealed = self._seal_ready(want.tenant_id, token_id, "access_token",
                                  answer.access_token.encode(), bound)
        rotated: bytes | None = b""
        if answer.refresh_token:
            rotated = self._seal_ready(want.tenant_id, want.connection_id, "refresh_token",
                                       answer.refresh_token.encode())
        if sealed is not None:
            token["sealed"] = sealed
        if answer.refresh_token and rotated is not None:
            values["refresh_token"] = rotated
        fast = (sealed is not None and rotated is not None and lease.status != "degraded"
                and not self.db.is_sqlite)
        # A re-seal batch locks connection and token rows too, and PostgreSQL breaks such a
        # cycle by failing one side. All of this store rolled back, and the lease is still
        # ours: store again rather than lose the token Google minted.
        stored = retry_deadlocks(
            lambda: self.db.run_hot(hot) if fast else self.db.run(in_session), self.sleep)
        if not stored:
            # Our lease expired and someone else took over; our token is still valid.
            log.warning("refresh result not stored: lease lost", extra={"event": "lease_lost"})
        return Issued(answer.access_token, expires_at, answer.scopes, token_id)

    def _seal_ready(self, tenant_id: uuid.UUID, row_id: uuid.UUID, field: str,
                    plaintext: bytes, bound: tuple[str, ...] = ()) -> bytes | None:
        """Seal a value for the store before its transaction; None leaves it to the store."""
        keys = self.keys()
        sealed = keys.seal_ready(tenant_id, row_id, field, plaintext, bound=bound)
        if sealed is not None or self.db.is_sqlite:
            return sealed
        # No nonce block left: reserve one and seal in a transaction of its own, not in the
        # store's, where the data key would be locked before the connection row (the reverse
        # of a re-seal batch's order). Should this fail, the store seals in its own, as before.
        try:
            with self.db.transaction() as session:
                return keys.seal(session, tenant_id, row_id, field, plaintext, bound=bound)
        except DBAPIError:
            log.info("nonce block not reserved apart; sealing in the store",
                     extra={"event": "seal_reserve"})
            return None

    def _release(self, want: Want, lease: Lease, **values: object) -> int:
        with self.db.transaction() as session:
            result = session.execute(
                update(Connection)
                .where(
                    Connection.id == want.connection_id,
                    Connection.refresh_lease_owner == self.owner,
                )
                .values(refresh_lease_until=None, refresh_lease_owner=None, **values)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def _failed(
        self, want: Want, lease: Lease, exc: GoogleError, google_ms: int
    ) -> Issued | None:
        if exc.kind is Failure.INVALID_GRANT:
            with self.db.transaction() as session:
                conn = session.get(Connection, want.connection_id)
                if conn is None or conn.version != lease.version:
                    return None  # a sibling refreshed meanwhile: re-read
                reason = rules.diagnose_invalid_grant(
                    exc.error_subtype, lease.created_at, lease.last_refresh_at,
                    lease.last_used_at, self.clock(),
                )
                self.store.mark_needs_reauth(session, conn, reason, want)
            raise ReauthRequired(reason=reason)
        if exc.kind is Failure.MISCONFIGURED:
            self._release(want, lease)
            self._paused_until = time.monotonic() + MISCONFIGURED_PAUSE
            metrics.MISCONFIGURED.inc()
            log.error("ALERT: Google rejected the broker's OAuth client (%s)", exc.error,
                      extra={"event": "broker_misconfigured"})
            raise BrokerMisconfigured()
        if exc.kind is Failure.INVALID_SCOPE:
            self._release(want, lease)
            raise ScopeNotGranted("Google says the grant lacks a requested scope.")
        now = self.clock()
        failures = lease.failures + 1
        wait = exc.retry_after or backoff(failures, base=1.0, cap=300.0)
        with self.db.transaction() as session:
            session.execute(
                update(Connection)
                .where(Connection.id == want.connection_id,
                       Connection.refresh_lease_owner == self.owner)
                .values(refresh_lease_until=None, refresh_lease_owner=None, status="degraded",
                        status_reason="upstream_" + exc.kind, consecutive_failures=failures,
                        next_retry_at=now + dt.timedelta(seconds=wait))
                .execution_options(synchronize_session=False)
            )
            audit.record(
                session, now=now, action="token.refresh", tenant_id=want.tenant_id,
                actor_type=want.actor_type, actor_id=want.actor_id,
                subject_user_id=want.user_id, ip=want.ip,
                outcome="error", reason=exc.kind, scopes=want.scopes,
                details={"error": exc.error[:60], "status": exc.status, "google_ms": google_ms},
            )
            if lease.status == "active":
                webhooks.enqueue(session, want.tenant_id, "connection.degraded",
                                 event_payload(want.connection_id, want.user_id))
        log.warning("refresh failed (%s %s)", exc.kind, exc.error, extra={"event": "refresh"})
        return self.store.fallback(want, wait, "Google could not refresh the token in time.")


def _ms_since(started: float) -> int:
    """Return whole milliseconds since a monotonic instant (Google's latency, for the audit)."""
    return round((time.monotonic() - started) * 1000)
