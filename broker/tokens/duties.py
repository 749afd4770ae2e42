"""The worker's token duty: refresh soon-expiring tokens ahead and keep idle grants alive."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import Select, and_, func, or_, select
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
    # Refreshes one pass takes on (its own, not `batch`, which other duties' windows share):
    # ten rounds of `parallel`, then the other duties get their turn.
    refresh_batch: int = 480
    # Refreshed at once, each claimed just before its call: a lease lasts one refresh budget,
    # so a long batch claimed up front expired under its last rows (and others took them).
    # Each waits on Google most of its time: 48 kept in flight allow 240 a second per
    # process at 200 ms (a million connections an hour on two processes).
    parallel: int = 48


Due = tuple[Connection, str | None, bool]


def _due_query(now: dt.datetime, w: RefreshWindows) -> Select[Connection, str, bool]:
    """Select due connections with their stored tokens' scope keys and the tenant's policy."""
    last_refresh = func.coalesce(Connection.last_refresh_at, Connection.created_at)
    return (
        select(Connection, AccessToken.scope_key, Policy.allow_broader_tokens)
        .join(User, User.id == Connection.user_id)
        .join(Policy, Policy.tenant_id == Connection.tenant_id)
        .outerjoin(AccessToken, AccessToken.connection_id == Connection.id)
        .where(
            Connection.status.in_(("active", "degraded")),
            Connection.held_at.is_(None),  # Google disabled the account: nothing to refresh
            User.status == "active",  # never keep a suspended user's grant alive
            Connection.refresh_token.is_not(None),
            or_(Connection.refresh_lease_until.is_(None), Connection.refresh_lease_until <= now),
            or_(Connection.next_retry_at.is_(None), Connection.next_retry_at <= now),
            or_(
                and_(AccessToken.expires_at < now + w.refresh_ahead,
                     Connection.last_used_at >= now - w.recently_used),
                last_refresh < now - w.keep_alive,
            ),
        )
        .order_by(Connection.id)
    )


def _due(session: Session, now: dt.datetime, w: RefreshWindows, limit: int) -> list[Due]:
    """Lock due connections, skipping rows another worker holds."""
    query = _due_query(now, w)
    locked = session.execute(
        query.limit(limit).with_for_update(skip_locked=True, of=Connection)
    ).all()
    if not locked:
        return []
    # Asked again now that the rows are ours: when a row's lock is won after another worker
    # refreshed it, PostgreSQL re-checks the locked connection but not its joined token, whose
    # old expiry would have it refreshed twice. A new statement sees the new token.
    ids = {conn.id for conn, _, _ in locked}
    rows = session.execute(query.where(Connection.id.in_(ids))).all()
    seen: set[uuid.UUID] = set()
    out: list[Due] = []
    for conn, key, allow_broader in rows:
        if conn.id not in seen:
            seen.add(conn.id)
            out.append((conn, key, allow_broader))
    return out


def _claim_due(app: Flask, w: RefreshWindows, limit: int) -> list[tuple[Want, Lease]]:
    """Claim the leases of up to `limit` due connections in one short transaction."""
    tokens, now = get_tokens(app), get_clock(app)()
    claimed = []
    with get_db(app).transaction() as session:
        for conn, key, allow_broader in _due(session, now, w, limit):
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
    return claimed


def refresh_due(app: Flask, w: RefreshWindows | None = None) -> int:
    """Refresh soon-expiring tokens of recently used connections and keep idle grants alive.

    Up to `parallel` refreshes stay in flight: whenever a quarter of them have ended, as many
    due connections are claimed again. Claimed batch by batch, every batch waited for its
    slowest call (and the next claim) while the other slots stood idle.
    """
    w = w or RefreshWindows()
    tokens = get_tokens(app)
    stored = handled = 0
    refill = max(1, w.parallel // 4)  # claims come in small batches, not one per refresh
    running: set[Future[bool]] = set()
    more = True
    with ThreadPoolExecutor(w.parallel, thread_name_prefix="refresh") as pool:
        while True:
            left = w.refresh_batch - handled
            room = min(w.parallel - len(running), left)
            if more and room > 0 and room >= min(refill, left):
                # Google is called after the claim commits: no transaction stays open meanwhile.
                claimed = _claim_due(app, w, room)
                more = bool(claimed)
                handled += len(claimed)
                running |= {pool.submit(tokens.refresh_held, *held) for held in claimed}
            if not running:
                return stored
            done, running = wait(running, return_when=FIRST_COMPLETED)
            stored += sum(future.result() for future in done)
