"""What the connection pages and the API list: a user's own connection, a tenant's page of them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.connections.connect import offered_scopes
from broker.connections.revoke import disconnect
from broker.db import get_db
from broker.models import Connection, Policy, Tenant, User


@dataclass(frozen=True)
class OwnConnection:
    """A user's connection (if any) with what their tenant offers them."""

    connection: Connection | None
    tenant: Tenant | None
    offered: list[str]


def own_connection(session: Session, user: User) -> OwnConnection:
    """Return the user's connection, their tenant and the scopes its policy offers."""
    connection = session.scalar(select(Connection).where(Connection.user_id == user.id))
    policy = session.get(Policy, user.tenant_id)
    tenant = session.get(Tenant, user.tenant_id)
    return OwnConnection(connection, tenant, offered_scopes(policy) if policy else [])


def disconnect_user(
    app: Flask, user: User, *, reason: str = "disconnected"
) -> bool | None:
    """Disconnect the user's own open connection; None when there was none to disconnect."""
    with get_db(app).transaction(write=False) as session:
        connection_id = session.scalar(
            select(Connection.id).where(
                Connection.user_id == user.id, Connection.status != "revoked"
            )
        )
    if connection_id is None:
        return None
    return disconnect(
        app, connection_id, actor_type="user", actor_id=str(user.id), reason=reason
    )


def tenant_connections(
    session: Session, tenant_id: uuid.UUID, *, status: str | None, after: uuid.UUID | None,
    limit: int,
) -> tuple[list[tuple[Connection, str]], bool]:
    """Return up to `limit` of a tenant's connections after an id, with emails; and if more."""
    query = (
        select(Connection, User.email)
        .join(User, User.id == Connection.user_id)
        .where(Connection.tenant_id == tenant_id)
        .order_by(Connection.id)
        .limit(limit + 1)
    )
    if status:
        query = query.where(Connection.status == status)
    if after:
        query = query.where(Connection.id > after)
    rows = [(conn, email) for conn, email in session.execute(query)]
    return rows[:limit], len(rows) > limit
