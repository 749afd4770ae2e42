"""The worker's token duty: refresh soon-expiring tokens ahead and keep idle grants alive."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, func, or_, select
from sqlalchemy import Connection as DBConnection

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


# Bound at each claim: the windows are measured from the claim's own `now`.
_NOW: BindParameter[dt.datetime] = bindparam("now")
_AHEAD: BindParameter[dt.datetime] = bindparam("ahead")
_RECENT: BindParameter[dt.datetime] = bindparam("recent")
_STALE: BindParameter[dt.datetime] = bindparam("stale")
_TAKEN: BindParameter[list[uuid.UUID]] = bindparam("taken", expanding=True)


def _eligible() -> list[ColumnElement[bool]]:
    """Return what a connection must be for any refresh: live, unleased, not backing off."""
    return [
        Connection.status.in_(("active", "degraded")),
        Connection.held_at.is_(None),  # Google disabled the account: nothing to refresh
        User.status == "active",  # never keep a suspended user's grant alive
        Connection.refresh_token.is_not(None),
        or_(Connection.refresh_lease_until.is_(None), Connection.refresh_lease_until <= _NOW),
        or_(Connection.next_retry_at.is_(None), Connection.next_retry_at <= _NOW),
    ]


def _expiring() -> ColumnElement[bool]:
    """A token about to expire, of a connection some job used recently.

    A job's hand-out leaves a token valid at the time of use, so the tokens of recently used
    connections expired within `recently_used` at the earliest: the bound keeps the walk of the
    expiry index off the long-expired tokens of idle grants, which keep-alive serves.
    """
    return and_(AccessToken.expires_at < _AHEAD, AccessToken.expires_at >= _RECENT,
                Connection.last_used_at >= _RECENT)


def _stale() -> ColumnElement[bool]:
    """An idle grant not refreshed for `keep_alive`: refreshed so Google keeps it alive."""
    return func.coalesce(Connection.last_refresh_at, Connection.created_at) < _STALE


def _locking(query: Select[uuid.UUID]) -> Select[uuid.UUID]:
    """Lock up to `limit` connections the query finds (none of `taken`), skipping rows another
    worker holds."""
    return (query.where(Connection.id.not_in(_TAKEN)).limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=Connection))


# The claim's statements, built once: building and keying them at every claim was a tenth of
# the worker's CPU (issue 18). Expiring tokens are found by walking the expiry index, soonest
# first (a scan of every connection in id order cost 40-110 ms a claim at 10,000 connections).
EXPIRING = _locking(select(Connection.id).join(User, User.id == Connection.user_id)
                    .join(AccessToken, AccessToken.connection_id == Connection.id)
                    .where(*_eligible(), _expiring()).order_by(AccessToken.expires_at))
# Idle grants have no index to walk.
STALE = _locking(select(Connection.id).join(User, User.id == Connection.user_id)
                 .where(*_eligible(), _stale()))
# What a claim needs of its locked rows, as plain rows: no ORM objects to build and flush.
DUE_ROWS = (
    select(Connection.id, Connection.tenant_id, Connection.user_id, Connection.version,
           Connection.refresh_token, Connection.status, Connection.consecutive_failures,
           Connection.created_at, Connection.last_refresh_at, Connection.last_used_at,
           Connection.refresh_lease_until, Connection.granted_scopes,
           Connection.withheld_scopes, AccessToken.scope_key, Policy.allow_broader_tokens)
    .join(User, User.id == Connection.user_id)
    .join(Policy, Policy.tenant_id == Connection.tenant_id)
    .outerjoin(AccessToken, AccessToken.connection_id == Connection.id)
    .where(*_eligible(), or_(_expiring(), _stale()),
           Connection.id.in_(bindparam("ids", expanding=True)))
    # A connection's first row names the key refreshed: its soonest expiring one.
    .order_by(Connection.id, AccessToken.expires_at)
)


def _windows(now: dt.datetime, w: RefreshWindows) -> dict[str, dt.datetime]:
    return {"now": now, "ahead": now + w.refresh_ahead, "recent": now - w.recently_used,
            "stale": now - w.keep_alive}


def _due(
    conn: DBConnection, now: dt.datetime, w: RefreshWindows, limit: int, idle: bool = True
) -> tuple[list[Any], bool]:
    """Lock due connections; also say whether idle grants may be left to keep alive.

    While `idle`, each claim keeps idle grants an eighth of its rows (so a steady stream of
    expiring tokens never starves them) and any room the expiring ones leave; a look that
    finds fewer than it asked for says none are left.
    """
    bound = _windows(now, w)

    def lock(query: Select[uuid.UUID], taken: list[uuid.UUID], n: int) -> list[uuid.UUID]:
        found = conn.execute(query, {**bound, "taken": taken, "limit": n}).scalars()
        return list(dict.fromkeys(found))  # a connection with two due scope keys comes twice

    ids: list[uuid.UUID] = []
    if idle:
        share = max(1, limit // 8)
        ids = lock(STALE, [], share)
        idle = len(ids) == share
    ids += lock(EXPIRING, ids, limit - len(ids))
    if idle and len(ids) < limit:
        more = lock(STALE, ids, limit - len(ids))
        idle = len(more) == limit - len(ids)
        ids += more
    if not ids:
        return [], idle
    # Asked again now that the rows are ours: when a row's lock is won after another worker
    # refreshed it, PostgreSQL re-checks the locked connection but not its joined token, whose
    # old expiry would have it refreshed twice. A new statement sees the new token.
    seen: set[uuid.UUID] = set()
    out: list[Any] = []  # DUE_ROWS's rows
    for row in conn.execute(DUE_ROWS, {**bound, "ids": ids}):
        if row.id not in seen:
            seen.add(row.id)
            out.append(row)
    return out, idle


def _claim_due(
    app: Flask, w: RefreshWindows, limit: int, idle: bool
) -> tuple[list[tuple[Want, Lease]], bool]:
    """Claim the leases of up to `limit` due connections in one short transaction; also say
    whether idle grants may be left (see `_due`)."""
    tokens, now = get_tokens(app), get_clock(app)()
    claimed = []
    with get_db(app).transaction() as session:
        due, idle = _due(session.connection(), now, w, limit, idle)
        for row, lease in zip(due, tokens.claim_locked(session, due, now), strict=True):
            if lease is None:
                continue
            # The scope key's scopes, never the stored row's answered ones: a token Google once
            # answered broadly must not be renewed broadly (issue 11 item 3). Keeping an idle
            # grant alive mints what jobs may use, never a withheld scope.
            key = row.scope_key
            wanted = key.split(" ") if key else rules.usable(
                gmail_only(row.granted_scopes), row.withheld_scopes)
            want = Want(row.id, row.tenant_id, row.user_id, wanted, key or scope_key(wanted), 0,
                        row.allow_broader_tokens, actor_id="worker")
            claimed.append((want, lease))
    return claimed, idle


def refresh_due(
    app: Flask, w: RefreshWindows | None = None, stop: threading.Event | None = None
) -> int:
    """Refresh soon-expiring tokens of recently used connections and keep idle grants alive.

    Up to `parallel` refreshes stay in flight: whenever a sixteenth of them have ended, as many
    due connections are claimed again (waiting for a quarter left a tenth of the slots idle on
    average; now that a claim is cheap, smaller ones pay). Claimed batch by batch, every batch
    waited for its slowest call (and the next claim) while the other slots stood idle. Once
    `stop` is set, nothing more is claimed and the refreshes in flight finish.
    """
    w = w or RefreshWindows()
    tokens = get_tokens(app)
    stored = handled = 0
    refill = max(1, w.parallel // 16)  # small batches still: a claim is one transaction
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
