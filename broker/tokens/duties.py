"""The worker's token duty: refresh soon-expiring tokens ahead and keep idle grants alive."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from broker.clock import get_clock
from broker.db import get_db
from broker.models import AccessToken, Connection, Policy, User
from broker.scopes import gmail_only, scope_key
from broker.tokens import rules
from broker.tokens.refresh import Lease
from broker.tokens.service import get_tokens
from broker.tokens.store import Want


@dataclass(frozen=True)
class RefreshWindows:
    """How far ahead and back the refresh duty looks, and how much it takes on at once."""

    refresh_ahead: dt.timedelta = dt.timedelta(minutes=10)
    recently_used: dt.timedelta = dt.timedelta(hours=1)
    keep_alive: dt.timedelta = dt.timedelta(days=14)
    batch: int = 50
    # Refreshes one call takes on (its own, not `batch`, which other duties' windows share):
    # ten rounds of `parallel` in a `--once` pass; `broker worker`'s refresh thread takes more.
    refresh_batch: int = 480
    # Refreshed at once, each claimed just before its call: a lease lasts one refresh budget,
    # so a long batch claimed up front expired under its last rows (and others took them).
    # Each waits on Google most of its time: 48 kept in flight allow 240 a second per
    # process at 200 ms (a million connections an hour on two processes). More threads cost
    # more than they bring: at 96 the GIL's hand-offs doubled the CPU per refresh (issue 18).
    parallel: int = 48


Due = tuple[Connection, str | None, bool]


def _eligible(now: dt.datetime) -> list[ColumnElement[bool]]:
    """Return what a connection must be for any refresh: live, unleased, not backing off."""
    return [
        Connection.status.in_(("active", "degraded")),
        Connection.held_at.is_(None),  # Google disabled the account: nothing to refresh
        User.status == "active",  # never keep a suspended user's grant alive
        Connection.refresh_token.is_not(None),
        or_(Connection.refresh_lease_until.is_(None), Connection.refresh_lease_until <= now),
        or_(Connection.next_retry_at.is_(None), Connection.next_retry_at <= now),
    ]


def _expiring(now: dt.datetime, w: RefreshWindows) -> ColumnElement[bool]:
    """A token about to expire, of a connection some job used recently.

    A job's hand-out leaves a token valid at the time of use, so the tokens of recently used
    connections expired within `recently_used` at the earliest: the bound keeps the walk of the
    expiry index off the long-expired tokens of idle grants, which keep-alive serves.
    """
    return and_(AccessToken.expires_at < now + w.refresh_ahead,
                AccessToken.expires_at >= now - w.recently_used,
                Connection.last_used_at >= now - w.recently_used)


def _stale(now: dt.datetime, w: RefreshWindows) -> ColumnElement[bool]:
    """An idle grant not refreshed for `keep_alive`: refreshed so Google keeps it alive."""
    return func.coalesce(Connection.last_refresh_at, Connection.created_at) < now - w.keep_alive


def _due_query(now: dt.datetime, w: RefreshWindows) -> Select[Connection, str, bool]:
    """Select due connections with their stored tokens' scope keys and the tenant's policy."""
    return (
        select(Connection, AccessToken.scope_key, Policy.allow_broader_tokens)
        .join(User, User.id == Connection.user_id)
        .join(Policy, Policy.tenant_id == Connection.tenant_id)
        .outerjoin(AccessToken, AccessToken.connection_id == Connection.id)
        .where(*_eligible(now), or_(_expiring(now, w), _stale(now, w)))
        # A connection's first row names the key refreshed: its soonest expiring one.
        .order_by(Connection.id, AccessToken.expires_at)
    )


def _lock(session: Session, query: Select[uuid.UUID], limit: int) -> list[uuid.UUID]:
    """Lock up to `limit` connections the query finds, skipping rows another worker holds."""
    found = session.scalars(query.limit(limit).with_for_update(skip_locked=True, of=Connection))
    return list(dict.fromkeys(found))  # a connection with two due scope keys comes twice


def _due(
    session: Session, now: dt.datetime, w: RefreshWindows, limit: int, idle: bool = True
) -> tuple[list[Due], bool]:
    """Lock due connections; also say whether idle grants may be left to keep alive.

    Expiring tokens are found by walking the expiry index, soonest first (a scan of every
    connection in id order cost 40-110 ms a claim at 10,000 connections). Idle grants have no
    index to walk: while `idle`, each claim keeps them an eighth of its rows (so a steady
    stream of expiring tokens never starves them) and any room the expiring ones leave; a
    look that finds fewer than it asked for says none are left.
    """
    expiring = (select(Connection.id)
                .join(User, User.id == Connection.user_id)
                .join(AccessToken, AccessToken.connection_id == Connection.id)
                .where(*_eligible(now), _expiring(now, w))
                .order_by(AccessToken.expires_at))
    stale = (select(Connection.id).join(User, User.id == Connection.user_id)
             .where(*_eligible(now), _stale(now, w)))
    ids: list[uuid.UUID] = []
    if idle:
        share = max(1, limit // 8)
        ids = _lock(session, stale, share)
        idle = len(ids) == share
    ids += _lock(session, expiring.where(Connection.id.not_in(ids)), limit - len(ids))
    if idle and len(ids) < limit:
        more = _lock(session, stale.where(Connection.id.not_in(ids)), limit - len(ids))
        idle = len(more) == limit - len(ids)
        ids += more
    if not ids:
        return [], idle
    # Asked again now that the rows are ours: when a row's lock is won after another worker
    # refreshed it, PostgreSQL re-checks the locked connection but not its joined token, whose
    # old expiry would have it refreshed twice. A new statement sees the new token.
    rows = session.execute(_due_query(now, w).where(Connection.id.in_(ids))).all()
    seen: set[uuid.UUID] = set()
    out: list[Due] = []
    for conn, key, allow_broader in rows:
        if conn.id not in seen:
            seen.add(conn.id)
            out.append((conn, key, allow_broader))
    return out, idle


def _claim_due(
    app: Flask, w: RefreshWindows, limit: int, idle: bool
) -> tuple[list[tuple[Want, Lease]], bool]:
    """Claim the leases of up to `limit` due connections in one short transaction; also say
    whether idle grants may be left (see `_due`)."""
    tokens, now = get_tokens(app), get_clock(app)()
    claimed = []
    with get_db(app).transaction() as session:
        due, idle = _due(session, now, w, limit, idle)
        for conn, key, allow_broader in due:
            lease = tokens.claim_locked(session, conn, now)
            if lease is None:
                continue
            # The scope key's scopes, never the stored row's answered ones: a token Google once
            # answered broadly must not be renewed broadly (issue 11 item 3). Keeping an idle
            # grant alive mints what jobs may use, never a withheld scope.
            wanted = key.split(" ") if key else rules.usable(
                gmail_only(conn.granted_scopes), conn.withheld_scopes)
            want = Want(conn.id, conn.tenant_id, conn.user_id, wanted,
                        key or scope_key(wanted), 0, allow_broader, actor_id="worker")
            claimed.append((want, lease))
    return claimed, idle


def refresh_due(
    app: Flask, w: RefreshWindows | None = None, stop: threading.Event | None = None
) -> int:
    """Refresh soon-expiring tokens of recently used connections and keep idle grants alive.

    Up to `parallel` refreshes stay in flight: whenever a quarter of them have ended, as many
    due connections are claimed again. Claimed batch by batch, every batch waited for its
    slowest call (and the next claim) while the other slots stood idle. Once `stop` is set,
    nothing more is claimed and the refreshes in flight finish.
    """
    w = w or RefreshWindows()
    tokens = get_tokens(app)
    stored = handled = 0
    refill = max(1, w.parallel // 4)  # claims come in small batches, not one per refresh
    running: set[Future[bool]] = set()
    more = idle = True
    with ThreadPoolExecutor(w.parallel, thread_name_prefix="refresh") as pool:
        while True:
            left = w.refresh_batch - handled
            room = min(w.parallel - len(running), left)
            if stop is not None and stop.is_set():
                more = False
            if more and room > 0 and room >= min(refill, left):
                # Google is called after the claim commits: no transaction stays open meanwhile.
                claimed, idle = _claim_due(app, w, room, idle)
                more = bool(claimed)
                handled += len(claimed)
                running |= {pool.submit(tokens.refresh_held, *held) for held in claimed}
            if not running:
                return stored
            done, running = wait(running, return_when=FIRST_COMPLETED)
            stored += sum(future.result() for future in done)
