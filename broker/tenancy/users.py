"""Users of a tenant: invitation, status and role changes with last-admin protection, sessions.

Every surface (the `broker user …` commands and the admin pages) calls these functions, so the
validation, the audit event and the refusal are the same whoever asks. `actor` is the audit
actor id: the admin's user id on the pages, `cli:<os user>` from the command line; an admin
never suspends or deletes themselves.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from broker import audit, webhooks
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.models import AccessToken, BrowserSession, Connection, Tenant, User
from broker.tenancy.tenants import normalise_email

ROLES = ("member", "admin")
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


def get_user(session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str) -> User:
    """Return a user of this tenant by id or email; another tenant's is as absent as unknown."""
    query = select(User).where(User.tenant_id == tenant_id)
    try:
        user_id = ref if isinstance(ref, uuid.UUID) else uuid.UUID(ref)
    except ValueError:
        user = session.scalar(query.where(User.email == str(ref).strip().lower()))
    else:
        user = session.scalar(query.where(User.id == user_id))
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
    session: Session, tenant_id: uuid.UUID, status: str | None = None,
    limit: int | None = None,
) -> list[Connection]:
    """Return the tenant's connections, those needing re-consent first."""
    if status and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    query = select(Connection).where(Connection.tenant_id == tenant_id)
    if status:
        query = query.where(Connection.status == status)
    query = query.order_by(_STATUS_ORDER, Connection.updated_at.desc()).limit(limit)
    return list(session.scalars(query))


def connection_counts(session: Session, tenant_id: uuid.UUID) -> dict[str, int]:
    """Count the tenant's connections by status, every status named (zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in session.execute(
        select(Connection.status, func.count()).where(Connection.tenant_id == tenant_id)
        .group_by(Connection.status)
    ):
        counts[status] = count
    return counts


def invite(
    session: Session, tenant_id: uuid.UUID, email: str, *, role: str = "member",
    actor: str | None = None, ip: str | None = None,
) -> User:
    """Invite an exact email address; bound to its Google account at first sign-in."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
    email = normalise_email(email)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("no such organization")
    if session.scalar(
        select(User.id).where(User.tenant_id == tenant_id, User.email == email)
    ) is not None:
        raise Conflict(f"{email} is already a user of tenant {tenant.slug!r}")
    user = User(tenant_id=tenant_id, email=email, role=role, status="invited")
    session.add(user)
    session.flush()
    audit.record(
        session, action="user.invite", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, subject_user_id=user.id, details={"email": email, "role": role},
    )
    return user


def _is_last_active_admin(session: Session, user: User) -> bool:
    if user.role != "admin" or user.status != "active":
        return False
    others = session.scalar(
        select(func.count()).select_from(User).where(
            User.tenant_id == user.tenant_id, User.role == "admin",
            User.status == "active", User.id != user.id,
        )
    )
    return not others


def end_sessions(session: Session, user_id: uuid.UUID, reason: str, now: dt.datetime) -> int:
    """End every open browser session of a user at once; return how many."""
    result = session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def sign_out(
    session: Session, user: User, browser_session_id: uuid.UUID, *, now: dt.datetime,
    ip: str | None = None,
) -> None:
    """End one of the user's browser sessions at their request and audit the sign-out."""
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.id == browser_session_id, BrowserSession.user_id == user.id,
               BrowserSession.ended_at.is_(None))
        .values(ended_at=now, end_reason="logout")
    )
    audit.record(
        session, action="signout", tenant_id=user.tenant_id, actor_type="user",
        actor_id=str(user.id), subject_user_id=user.id, ip=ip,
    )


def set_status(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, status: str, *,
    now: dt.datetime, actor: str | None = None, ip: str | None = None,
) -> User:
    """Suspend or reactivate a user; suspension ends their sessions and stops hand-outs."""
    if status not in ("suspended", "active"):
        raise InvalidRequest("status must be suspended or active")
    user = get_user(session, tenant_id, ref)
    if status == "suspended" and str(user.id) == actor:
        raise Conflict("You cannot suspend yourself; ask another admin.")
    if status == "suspended" and _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be suspended")
    before = user.status
    if status == "active" and user.google_sub is None:
        status = "invited"  # never signed in: reactivating restores the invitation
    user.status = status
    if status == "suspended":
        end_sessions(session, user.id, "suspended", now)
    audit.record(
        session, action=f"user.{'suspend' if status == 'suspended' else 'reactivate'}",
        tenant_id=user.tenant_id, actor_type="admin", actor_id=actor, ip=ip,
        subject_user_id=user.id, details={"before": before, "after": status},
    )
    return user


def set_role(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, role: str, *,
    actor: str | None = None, ip: str | None = None,
) -> User:
    """Change a user's role; the last active admin cannot be demoted."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
    user = get_user(session, tenant_id, ref)
    if role != "admin" and _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be demoted")
    before, user.role = user.role, role
    audit.record(
        session, action="user.role", tenant_id=user.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, subject_user_id=user.id, details={"before": before, "after": role},
    )
    return user


def deletable_connection_ids(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, *, actor: str | None = None
) -> list[uuid.UUID]:
    """Check a user of the tenant may be deleted; return their connections to revoke first."""
    user = get_user(session, tenant_id, ref)
    if str(user.id) == actor:
        raise Conflict("You cannot delete yourself; ask another admin.")
    if _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be deleted")
    return list(session.scalars(select(Connection.id).where(Connection.user_id == user.id)))


def delete_user(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, *,
    actor: str | None = None, ip: str | None = None,
) -> str:
    """Delete a user whose grant was revoked, with their sessions; return their email."""
    deletable_connection_ids(session, tenant_id, ref, actor=actor)
    user = get_user(session, tenant_id, ref)
    email = user.email
    audit.record(
        session, action="user.delete", tenant_id=user.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, subject_user_id=user.id, details={"email": email},
    )
    session.delete(user)
    return email


def end_all_sessions(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, *, now: dt.datetime,
    actor: str | None = None, ip: str | None = None,
) -> int:
    """End every browser session of a user at once and audit it; return how many."""
    user = get_user(session, tenant_id, ref)
    count = end_sessions(session, user.id, "admin", now)
    audit.record(
        session, action="user.end_sessions", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, subject_user_id=user.id, ip=ip, details={"ended": count},
    )
    return count


def force_reconsent(
    session: Session, tenant_id: uuid.UUID, ref: uuid.UUID | str, *, now: dt.datetime,
    reauth_url: str, actor: str | None = None, ip: str | None = None,
) -> Connection:
    """Stop hand-outs for a user's grant until they consent again; audit and notify."""
    user = get_user(session, tenant_id, ref)
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
        actor_id=actor, subject_user_id=user.id, ip=ip, reason=FORCED_REASON,
        details={"before": before, "after": "needs_reauth"},
    )
    webhooks.enqueue(session, tenant_id, "connection.needs_reauth", {
        "connection_id": str(connection.id), "user_id": str(user.id), "email": user.email,
        "reason": FORCED_REASON, "reauth_url": reauth_url,
    }, now=now)
    return connection
