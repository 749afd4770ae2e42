"""Disconnect: revoke at Google holding no transaction, then erase and audit in a short one."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.db import get_db
from broker.errors import Conflict
from broker.google import GoogleError, NotConfigured, get_google
from broker.keys import SealError, get_keys
from broker.models import AccessToken, Connection

log = logging.getLogger(__name__)
REVOKE_TIMEOUT = 5.0


def _refresh_tokens(app: Flask, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """Open the stored refresh tokens of connections (None: nothing left to revoke)."""
    wanted = list(ids)
    out: dict[uuid.UUID, str | None] = {}
    if not wanted:
        return out
    keys = get_keys(app)
    with get_db(app).transaction(write=False) as session:
        for conn in session.scalars(select(Connection).where(Connection.id.in_(wanted))):
            if conn.refresh_token is None:
                out[conn.id] = None
                continue
            try:
                out[conn.id] = keys.open(
                    session, conn.tenant_id, conn.id, "refresh_token", conn.refresh_token
                ).decode()
            except SealError:
                out[conn.id] = None  # nothing left that could ever be used
    return out


def revoke_grants(app: Flask, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bool]:
    """Revoke each connection's grant at Google, holding no transaction; True when done."""
    results = {}
    for conn_id, token in _refresh_tokens(app, ids).items():
        if token is None:
            results[conn_id] = True
            continue
        try:
            get_google(app).revoke(token, timeout=REVOKE_TIMEOUT)
            results[conn_id] = True
        except (GoogleError, NotConfigured) as exc:
            log.warning("revocation failed (%s)", type(exc).__name__)
            results[conn_id] = False
    return results


def mark_disconnected(
    session: Session, connection: Connection, *, revoked: bool, actor_type: str = "admin",
    actor_id: str | None = None, reason: str = "disconnected",
) -> None:
    """Erase the access tokens and mark the connection revoked, in the caller's transaction.

    The sealed refresh token is kept only while the revocation is pending, so the worker can
    retry it; it is never handed out again either way.
    """
    session.execute(delete(AccessToken).where(AccessToken.connection_id == connection.id))
    before = connection.status
    connection.status, connection.status_reason = "revoked", reason
    connection.revocation_pending = not revoked
    if revoked:
        connection.refresh_token = None
    connection.refresh_lease_until = connection.refresh_lease_owner = None
    audit.record(
        session, action="connection.revoke", tenant_id=connection.tenant_id,
        actor_type=actor_type, actor_id=actor_id, subject_user_id=connection.user_id,
        reason=reason, outcome="ok" if revoked else "error",
        details={"revocation_pending": not revoked},
    )
    if before != "revoked":
        webhooks.enqueue(session, connection.tenant_id, "connection.revoked", {
            "connection_id": str(connection.id), "user_id": str(connection.user_id),
        })


def disconnect(
    app: Flask, connection_id: uuid.UUID, *, actor_type: str = "admin",
    actor_id: str | None = None, reason: str = "disconnected",
) -> bool | None:
    """Revoke at Google, then erase and audit; None when there was nothing to disconnect."""
    revoked = revoke_grants(app, [connection_id]).get(connection_id)
    if revoked is None:
        return None
    with get_db(app).transaction() as session:
        connection = session.scalar(
            select(Connection).where(Connection.id == connection_id).with_for_update()
        )
        settled = connection is None or (
            connection.status == "revoked" and not connection.revocation_pending
        )
        if connection is None or settled:
            return None
        mark_disconnected(
            session, connection, revoked=revoked, actor_type=actor_type, actor_id=actor_id,
            reason=reason,
        )
    return revoked


def revoke_before_delete(
    app: Flask, ids: Iterable[uuid.UUID], *, force: bool = False, actor_type: str = "admin",
    actor_id: str | None = None,
) -> int:
    """Revoke and erase grants whose rows are about to be deleted; return how many failed.

    A deleted row leaves nothing the worker could retry with, so a failed revocation stops the
    deletion (raising Conflict, nothing changed) unless `force` accepts grants that Google may
    still honour.
    """
    results = revoke_grants(app, ids)
    failed = sum(1 for done in results.values() if not done)
    if failed and not force:
        raise Conflict(
            f"Google could not be reached to revoke {failed} grant(s); nothing was deleted. "
            "Try again later."
        )
    with get_db(app).transaction() as session:
        for connection in session.scalars(
            select(Connection).where(Connection.id.in_(list(results))).with_for_update()
        ):
            mark_disconnected(
                session, connection, revoked=results[connection.id], actor_type=actor_type,
                actor_id=actor_id, reason="deleted",
            )
    return failed

