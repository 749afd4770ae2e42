"""The worker's connection duties: retry failed revocations, disconnect inactive users."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import or_, select

from broker.clock import get_clock
from broker.connections.revoke import disconnect, revoke_grants
from broker.db import get_db
from broker.models import Connection, Policy, User


@dataclass(frozen=True)
class RevocationWindows:
    """How many pending revocations one pass retries."""

    batch: int = 50


def retry_revocations(app: Flask, w: RevocationWindows | None = None) -> int:
    """Retry revocations that failed at disconnect time; erase the token once Google confirms."""
    w = w or RevocationWindows()
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
