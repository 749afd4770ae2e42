"""The worker: proactive refresh, keep-alive, audit chaining, revocations, webhooks, re-seal,
retention. Work is claimed with FOR UPDATE SKIP LOCKED so replicas never share a row."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.clock import get_clock
from broker.connections import disconnect, revoke_grants
from broker.db import get_db
from broker.keys import get_keys, reseal_tenant
from broker.models import AccessToken, AuditEvent, Connection, DataKey, Policy, User
from broker.scopes import gmail_only, scope_key
from broker.tokens import Want, get_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows:
    """How far ahead and back the worker looks."""

    refresh_ahead: dt.timedelta = dt.timedelta(minutes=10)
    recently_used: dt.timedelta = dt.timedelta(hours=1)
    keep_alive: dt.timedelta = dt.timedelta(days=14)
    audit_lag: dt.timedelta = dt.timedelta(seconds=2)
    batch: int = 50
    # Refreshed at once, each claimed just before its call: a lease lasts one refresh budget,
    # so a long batch claimed up front expired under its last rows (and others took them).
    parallel: int = 8


Due = tuple[Connection, str | None, list[str] | None]


def _due_query(now: dt.datetime, w: Windows) -> Select[Connection, str, list[str]]:
    """Select due connections with their stored tokens' scope keys and scopes."""
    last_refresh = func.coalesce(Connection.last_refresh_at, Connection.created_at)
    return (
        select(Connection, AccessToken.scope_key, AccessToken.scopes)
        .join(User, User.id == Connection.user_id)
        .outerjoin(AccessToken, AccessToken.connection_id == Connection.id)
        .where(
            Connection.status.in_(("active", "degraded")),
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


def _due(session: Session, now: dt.datetime, w: Windows, limit: int) -> list[Due]:
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
    for conn, key, scopes in rows:
        if conn.id not in seen:
            seen.add(conn.id)
            out.append((conn, key, scopes))
    return out


def _claim_due(app: Flask, w: Windows, limit: int) -> list[tuple[Want, Any]]:
    """Claim the leases of up to `limit` due connections in one short transaction."""
    tokens, now = get_tokens(app), get_clock(app)()
    claimed = []
    with get_db(app).transaction() as session:
        for conn, key, scopes in _due(session, now, w, limit):
            lease = tokens.claim_locked(session, conn, now)
            if lease is None:
                continue
            wanted = sorted(scopes) if key is not None and scopes else gmail_only(
                conn.granted_scopes)
            want = Want(conn.id, conn.tenant_id, conn.user_id, wanted,
                        key if key is not None else scope_key(wanted), 0, False,
                        actor_id="worker")
            claimed.append((want, lease))
    return claimed


def refresh_due(app: Flask, w: Windows | None = None) -> int:
    """Refresh soon-expiring tokens of recently used connections and keep idle grants alive."""
    w = w or Windows()
    tokens = get_tokens(app)
    stored = handled = 0
    with ThreadPoolExecutor(w.parallel, thread_name_prefix="refresh") as pool:
        while handled < w.batch:
            claimed = _claim_due(app, w, min(w.parallel, w.batch - handled))
            if not claimed:
                break
            handled += len(claimed)
            # Google is called after the claim commits: no transaction stays open meanwhile.
            stored += sum(pool.map(lambda held: tokens.refresh_held(*held), claimed))
    return stored


def chain_audit(app: Flask, w: Windows | None = None) -> int:
    """Append events older than the lag to each tenant's chain."""
    w = w or Windows()
    db, keys = get_db(app), get_keys(app)
    older_than = get_clock(app)() - w.audit_lag
    with db.transaction(write=False) as session:
        tenants = list(session.scalars(
            select(AuditEvent.tenant_id).distinct().where(AuditEvent.chain_seq.is_(None))
        ))
    total = 0
    for tenant_id in tenants:
        with db.transaction() as session:
            total += audit.chain(session, keys, tenant_id, older_than=older_than)
    return total


def retry_revocations(app: Flask, w: Windows | None = None) -> int:
    """Retry revocations that failed at disconnect time; erase the token once Google confirms."""
    w = w or Windows()
    now, owner = get_clock(app)(), f"worker-{uuid.uuid4().hex[:12]}"
    db = get_db(app)
    # Claim rows with the refresh lease so Google is called with no transaction open.
    with db.transaction() as session:
        rows = session.scalars(
            select(Connection).where(
                Connection.revocation_pending.is_(True),
                or_(Connection.refresh_lease_until.is_(None),
                    Connection.refresh_lease_until <= now),
            ).limit(w.batch).with_for_update(skip_locked=True)
        ).all()
        for conn in rows:
            conn.refresh_lease_until = now + dt.timedelta(seconds=60)
            conn.refresh_lease_owner = owner
        claimed = [conn.id for conn in rows]
    results = revoke_grants(app, claimed)
    with db.transaction() as session:
        for conn in session.scalars(select(Connection).where(Connection.id.in_(claimed))):
            if conn.refresh_lease_owner != owner:
                continue
            if results.get(conn.id):
                conn.refresh_token, conn.revocation_pending = None, False
            conn.refresh_lease_until = conn.refresh_lease_owner = None
    return sum(1 for done in results.values() if done)


def reseal(app: Flask) -> int:
    """Re-seal rows of tenants that have older data keys still in use."""
    db = get_db(app)
    with db.transaction(write=False) as session:
        tenants = list(session.scalars(
            select(DataKey.tenant_id).where(DataKey.tenant_id.is_not(None),
                                            DataKey.retired_at.is_(None))
            .group_by(DataKey.tenant_id).having(func.count() > 1)
        ))
    return sum(reseal_tenant(get_keys(app), db, t).resealed for t in tenants if t is not None)


def purge_inactive(app: Flask) -> int:
    """Disconnect grants of users inactive (no sign-in, no hand-out) beyond retention_days."""
    now = get_clock(app)()
    with get_db(app).transaction(write=False) as session:
        rows = session.execute(
            select(Connection, User.last_login_at, Policy.retention_days)
            .join(User, User.id == Connection.user_id)
            .join(Policy, Policy.tenant_id == Connection.tenant_id)
            .where(Policy.retention_days.is_not(None), Connection.status != "revoked")
        ).all()
    stale = []
    for conn, last_login, days in rows:
        cutoff = now - dt.timedelta(days=int(days or 0))
        seen = (conn.last_used_at, last_login, conn.created_at)
        if max(d for d in seen if d is not None) < cutoff:
            stale.append(conn.id)
    return sum(
        disconnect(app, conn_id, actor_type="system", reason="retention") is not None
        for conn_id in stale
    )


DUTIES = (refresh_due, chain_audit, retry_revocations, webhooks.deliver_due, reseal,
          purge_inactive)


def run_once(app: Flask) -> dict[str, int]:
    """Run every duty once; a failing duty is logged and does not stop the others."""
    report = {}
    for duty in DUTIES:
        try:
            report[duty.__name__] = int(duty(app))
        except Exception:  # noqa: BLE001 - one duty's failure must not stop the rest
            log.exception("worker duty %s failed", duty.__name__)
            report[duty.__name__] = -1
    return report


def run(app: Flask, *, once: bool = False, interval: float = 15.0) -> None:
    """Run the duties forever (or once); go again at once while a duty filled its batch."""
    batch = Windows().batch
    while True:
        report = run_once(app)
        log.info("worker pass: %s", report, extra={"event": "worker"})
        if once:
            return
        if max(report.values(), default=0) < batch:
            time.sleep(interval)
