"""Users of a tenant: invitation, status changes with last-admin protection, session ending."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker import audit
from broker.clock import utcnow
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.models import BrowserSession, Tenant, User
from broker.tenancy.tenants import normalise_email

ROLES = ("member", "admin")


def get_user(session: Session, tenant: Tenant, email_or_id: str) -> User:
    """Return a user of this tenant by email or id, or raise NotFound."""
    query = select(User).where(User.tenant_id == tenant.id)
    try:
        user_id = uuid.UUID(email_or_id)
    except ValueError:
        user = session.scalar(query.where(User.email == email_or_id.strip().lower()))
    else:
        user = session.scalar(query.where(User.id == user_id))
    if user is None:
        raise NotFound(f"no user {email_or_id!r} in tenant {tenant.slug!r}")
    return user


def invite(
    session: Session, tenant: Tenant, email: str, *, role: str = "member",
    actor: str | None = None,
) -> User:
    """Invite an exact email address; bound to its Google account at first sign-in."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
    email = normalise_email(email)
    if session.scalar(
        select(User.id).where(User.tenant_id == tenant.id, User.email == email)
    ) is not None:
        raise Conflict(f"{email} is already a user of tenant {tenant.slug!r}")
    user = User(tenant_id=tenant.id, email=email, role=role, status="invited")
    session.add(user)
    session.flush()
    audit.record(
        session, action="user.invite", tenant_id=tenant.id, actor_type="admin",
        actor_id=actor, subject_user_id=user.id, details={"email": email, "role": role},
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


def end_sessions(
    session: Session, user_id: uuid.UUID, reason: str, now: dt.datetime | None = None
) -> int:
    """End every open browser session of a user at once; return how many."""
    result = session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None))
        .values(ended_at=now or utcnow(), end_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def set_status(
    session: Session, user: User, status: str, *, actor: str | None = None
) -> User:
    """Suspend or reactivate a user; suspension ends their sessions and stops hand-outs."""
    if status not in ("suspended", "active"):
        raise InvalidRequest("status must be suspended or active")
    if status == "suspended" and _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be suspended")
    before = user.status
    if status == "active" and user.google_sub is None:
        status = "invited"  # never signed in: reactivating restores the invitation
    user.status = status
    if status == "suspended":
        end_sessions(session, user.id, "suspended")
    audit.record(
        session, action=f"user.{'suspend' if status == 'suspended' else 'reactivate'}",
        tenant_id=user.tenant_id, actor_type="admin", actor_id=actor,
        subject_user_id=user.id, details={"before": before, "after": status},
    )
    return user


def set_role(session: Session, user: User, role: str, *, actor: str | None = None) -> User:
    """Change a user's role; the last active admin cannot be demoted."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
    if role != "admin" and _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be demoted")
    before, user.role = user.role, role
    audit.record(
        session, action="user.role", tenant_id=user.tenant_id, actor_type="admin",
        actor_id=actor, subject_user_id=user.id, details={"before": before, "after": role},
    )
    return user


def check_deletable(session: Session, user: User) -> None:
    """Refuse to delete the last active admin of a tenant."""
    if _is_last_active_admin(session, user):
        raise Conflict("the last active admin of a tenant cannot be deleted")


def delete_user(session: Session, user: User, *, actor: str | None = None) -> None:
    """Delete the user, their sessions and their (already revoked) connection."""
    check_deletable(session, user)
    audit.record(
        session, action="user.delete", tenant_id=user.tenant_id, actor_type="admin",
        actor_id=actor, subject_user_id=user.id, details={"email": user.email},
    )
    session.delete(user)
