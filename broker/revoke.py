"""Disconnect a connection: revoke the grant at Google, erase sealed tokens, audit."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from sqlalchemy import delete
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.crypto import SealError
from broker.google import GoogleError, NotConfigured, get_google
from broker.keyring import get_keys
from broker.models import AccessToken, Connection

log = logging.getLogger(__name__)
REVOKE_TIMEOUT = 5.0


def revoke_at_google(app: Flask, session: Session, connection: Connection) -> bool:
    """Revoke the connection's grant at Google; True when done (or nothing to revoke)."""
    if connection.refresh_token is None:
        return True
    try:
        token = get_keys(app).open(
            session, connection.tenant_id, connection.id, "refresh_token",
            connection.refresh_token,
        ).decode()
    except SealError:
        return True  # nothing left that could ever be used
    try:
        get_google(app).revoke(token, timeout=REVOKE_TIMEOUT)
    except (GoogleError, NotConfigured) as exc:
        log.warning("revocation failed; the worker retries it (%s)", type(exc).__name__)
        return False
    return True


def disconnect(
    session: Session, connection: Connection, *, app: Flask | None = None,
    actor_type: str = "admin", actor_id: str | None = None, reason: str = "disconnected",
) -> bool:
    """Revoke at Google, erase the access tokens, mark the connection revoked.

    The sealed refresh token is kept only while the revocation is pending, so the worker can
    retry it; return whether Google confirmed the revocation.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    done = revoke_at_google(app, session, connection)
    session.execute(delete(AccessToken).where(AccessToken.connection_id == connection.id))
    before = connection.status
    connection.status, connection.status_reason = "revoked", reason
    connection.revocation_pending = not done
    if done:
        connection.refresh_token = None
    connection.refresh_lease_until = connection.refresh_lease_owner = None
    audit.record(
        session, action="connection.revoke", tenant_id=connection.tenant_id,
        actor_type=actor_type, actor_id=actor_id, subject_user_id=connection.user_id,
        reason=reason, outcome="ok" if done else "error",
        details={"revocation_pending": not done},
    )
    if before != "revoked":
        webhooks.enqueue(session, connection.tenant_id, "connection.revoked", {
            "connection_id": str(connection.id), "user_id": str(connection.user_id),
        })
    return done


def revoke_callback(app: Flask) -> object:
    """Return the `revoke(session, connection)` callback user and tenant deletion use."""

    def revoke(session: Session, connection: Connection) -> None:
        disconnect(session, connection, app=app, reason="deleted")

    return revoke
