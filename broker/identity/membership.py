"""Which tenant a Google account belongs to (DESIGN §6): `hd` domains or exact invitations."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.identity.refusals import Refusal
from broker.models import Tenant, TenantDomain, User

ACTION = "signin.refused"


def _refuse(
    reason: str, claims: dict[str, Any], tenant_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> Refusal:
    details = {"hd": str(claims["hd"])} if claims.get("hd") else {}
    return Refusal(
        reason, action=ACTION, tenant_id=tenant_id, user_id=user_id, details=details,
        email=str(claims.get("email") or ""),
    )


def _domain_tenant(db: Session, hd: str) -> uuid.UUID | None:
    return db.scalar(select(TenantDomain.tenant_id).where(TenantDomain.domain == hd.lower()))


def _check_bound(db: Session, user: User, claims: dict[str, Any]) -> User:
    """Keep a known account's membership only while the rules that admitted it still hold."""
    hd = str(claims.get("hd") or "")
    if hd:
        if _domain_tenant(db, hd) != user.tenant_id:
            raise _refuse("unknown_domain", claims, user.tenant_id, user.id)
    else:
        tenant = db.get(Tenant, user.tenant_id)
        if tenant is None or not tenant.allow_consumer_accounts:
            raise _refuse("not_invited", claims, user.tenant_id, user.id)
    if user.status == "suspended":
        raise _refuse("user_suspended", claims, user.tenant_id, user.id)
    return user


def _bind(user: User, claims: dict[str, Any]) -> User:
    if user.status == "suspended":
        raise _refuse("user_suspended", claims, user.tenant_id, user.id)
    user.google_sub = str(claims["sub"])
    user.status = "active"
    return user


def resolve_member(db: Session, claims: dict[str, Any]) -> User:
    """Return the user these verified claims sign in as, creating or binding it; else refuse."""
    sub = str(claims["sub"])
    email = str(claims.get("email") or "").strip().lower()
    if not email or claims.get("email_verified") not in (True, "true"):
        raise _refuse("email_unverified", claims)
    name = str(claims.get("name") or "")[:200]
    user = db.scalar(select(User).where(User.google_sub == sub))
    if user is not None:
        user = _check_bound(db, user, claims)
    elif claims.get("hd"):
        tenant_id = _domain_tenant(db, str(claims["hd"]))
        if tenant_id is None:
            raise _refuse("unknown_domain", claims)
        user = db.scalar(select(User).where(User.tenant_id == tenant_id, User.email == email))
        if user is None:
            user = User(
                id=uuid.uuid4(), tenant_id=tenant_id, email=email, google_sub=sub,
                role="member", status="active",
            )
            db.add(user)
        elif user.google_sub is not None:
            raise _refuse("account_conflict", claims, tenant_id, user.id)
        else:
            user = _bind(user, claims)
    else:
        user = db.scalar(
            select(User)
            .join(Tenant, Tenant.id == User.tenant_id)
            .where(
                User.email == email, User.google_sub.is_(None),
                Tenant.allow_consumer_accounts.is_(True),
            )
            .order_by(User.created_at)
            .limit(1)
        )
        if user is None:
            raise _refuse("not_invited", claims)
        user = _bind(user, claims)
    if name:
        user.name = name
    return user
