"""A tenant admin's view of users and connections: listing, sessions, forced re-consent."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import case, delete, select
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.models import AccessToken, Connection, User
from broker.tenancy import users

STATUSES = ("needs_reauth", "degraded", "active", "revoked")
FORCED_REASON = "admin_forced"
# Those needing people's attention first.
_STATUS_ORDER = case(
    {status: rank for rank, status in enumerate(STATUSES)}, value=Connection.status, else_=9
)


@dataclass
class UserRow:
    """One line of the users page."""

    user: User
    connection: Connection | None


def get_user(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID) -> User:
    """Return a user of this tenant; another tenant's id is as absent as an unknown one."""
    user = session.scalar(select(User).where(User.id == user_id, User.tenant_id == tenant_id))
    if user is None:
        raise NotFound("There is no such user in your organization.")
    return user


def list_users(session: Session, tenant_id: uuid.UUID) -> list[UserRow]:
    """Return the tenant's users with their connections, admins first, then by email."""
    rows = session.execute(
        select(User, Connection)
        .outerjoin(Connection, Connection.user_id == User.id)
        .where(User.tenant_id == tenant_id)
        .order_by(User.role.asc(), User.email)
    )
    return [UserRow(user, connection) for user, connection in rows]


def list_connections(
    session: Session, tenant_id: uuid.UUID, status: str | None = None
) -> list[Connection]:
    """Return the tenant's connections, those needing re-consent first."""
    if status and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    query = select(Connection).where(Connection.tenant_id == tenant_id)
    if status:
        query = query.where(Connection.status == status)
    return list(session.scalars(query.order_by(_STATUS_ORDER, Connection.updated_at.desc())))


def change_status(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, status: str, *,
    actor: User,
) -> User:
    """Suspend or reactivate a user of the tenant; nobody suspends themselves."""
    user = get_user(session, tenant_id, user_id)
    if status == "suspended" and user.id == actor.id:
        raise Conflict("You cannot suspend yourself; ask another admin.")
    return users.set_status(session, user, status, actor=str(actor.id))


def deletable_connection_ids(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: User
) -> list[uuid.UUID]:
    """Check a user of the tenant may be deleted; return their connections to revoke first."""
    user = get_user(session, tenant_id, user_id)
    if user.id == actor.id:
        raise Conflict("You cannot delete yourself; ask another admin.")
    users.check_deletable(session, user)
    return list(session.scalars(select(Connection.id).where(Connection.user_id == user.id)))


def remove_user(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: User
) -> str:
    """Delete a user of the tenant whose grant was revoked; return their email."""
    deletable_connection_ids(session, tenant_id, user_id, actor=actor)
    user = get_user(session, tenant_id, user_id)
    email = user.email
    users.delete_user(session, user, actor=str(actor.id))
    return email


def end_all_sessions(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: User,
    now: dt.datetime, ip: str | None = None,
) -> int:
    """End every browser session of a user at once and audit it; return how many."""
    user = get_user(session, tenant_id, user_id)
    count = users.end_sessions(session, user.id, "admin", now)
    audit.record(
        session, action="user.end_sessions", tenant_id=tenant_id, actor_type="admin",
        actor_id=str(actor.id), subject_user_id=user.id, ip=ip, details={"ended": count},
    )
    return count


def force_reconsent(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: User,
    now: dt.datetime, reauth_url: str, ip: str | None = None,
) -> Connection:
    """Stop hand-outs for a user's grant until they consent again; audit and notify."""
    user = get_user(session, tenant_id, user_id)
    connection = session.scalar(
        select(Connection).where(Connection.user_id == user.id).with_for_update()
    )
    if connection is None or connection.status == "revoked":
        raise Conflict(f"{user.email} has no Gmail connection to re-consent.")
    if connection.status == "needs_reauth":
        raise Conflict(f"{user.email} already needs to re-consent.")
    before = connection.status
    connection.status, connection.status_reason = "needs_reauth", FORCED_REASON
    connection.version = (connection.version or 0) + 1
    connection.updated_at = now
    # Tokens minted under the old consent must not be handed out any more.
    session.execute(delete(AccessToken).where(AccessToken.connection_id == connection.id))
    audit.record(
        session, action="connection.force_reconsent", tenant_id=tenant_id, actor_type="admin",
        actor_id=str(actor.id), subject_user_id=user.id, ip=ip, reason=FORCED_REASON,
        details={"before": before, "after": "needs_reauth"},
    )
    webhooks.enqueue(session, tenant_id, "connection.needs_reauth", {
        "connection_id": str(connection.id), "user_id": str(user.id), "email": user.email,
        "reason": FORCED_REASON, "reauth_url": reauth_url,
    })
    return connection
