"""Which tenant a Google account belongs to (DESIGN §6): `hd` domains or exact invitations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.identity.refusals import Refusal
from broker.models import Tenant, TenantDomain, User

ACTION = "signin.refused"


@dataclass(frozen=True)
class Invitation:
    """A tenant that invited a personal account, as the chooser page names it."""

    slug: str
    name: str


class ChooseTenant(Exception):
    """A personal account has invitations but named no tenant: the person must pick one."""

    def __init__(self, email: str, invitations: list[Invitation]) -> None:
        super().__init__("choose_tenant")
        self.email = email
        self.invitations = invitations


def _refuse(
    reason: str, claims: dict[str, Any], tenant_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None, signin_tenant: uuid.UUID | None = None,
) -> Refusal:
    details = {"hd": str(claims["hd"])} if claims.get("hd") else {}
    if signin_tenant is not None:
        details["signin_tenant_id"] = str(signin_tenant)
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


def _invitation(db: Session, email: str, tenant_id: uuid.UUID) -> User | None:
    """Return this tenant's pending invitation of a personal account, if it admits them."""
    return db.scalar(
        select(User)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(
            User.tenant_id == tenant_id, User.email == email, User.google_sub.is_(None),
            Tenant.allow_consumer_accounts.is_(True),
        )
    )


def _invitations(db: Session, email: str) -> list[Invitation]:
    """Return every tenant with a pending invitation of this personal account."""
    rows = db.execute(
        select(Tenant.slug, Tenant.name)
        .join(User, User.tenant_id == Tenant.id)
        .where(
            User.email == email, User.google_sub.is_(None),
            Tenant.allow_consumer_accounts.is_(True),
        )
        .order_by(Tenant.name, Tenant.slug)
    )
    return [Invitation(slug, name) for slug, name in rows]


def resolve_member(
    db: Session, claims: dict[str, Any], tenant_id: uuid.UUID | None = None
) -> User:
    """Return the user these verified claims sign in as, creating or binding it; else refuse.

    `tenant_id` is the tenant the sign-in was started for (`/auth/login?tenant=SLUG`), or None.
    A personal account (no `hd`) joins a tenant only through a sign-in started for it: any
    admin can invite any address, so without that choice the first inviter would capture the
    person. Invited but unchosen, it raises ChooseTenant and binds nothing.
    """
    sub = str(claims["sub"])
    email = str(claims.get("email") or "").strip().lower()
    if not email or claims.get("email_verified") not in (True, "true"):
        raise _refuse("email_unverified", claims)
    name = str(claims.get("name") or "")[:200]
    user = db.scalar(select(User).where(User.google_sub == sub))
    if user is not None:
        user = _check_bound(db, user, claims)
        if tenant_id is not None and user.tenant_id != tenant_id:
            raise _refuse("tenant_mismatch", claims, user.tenant_id, user.id, tenant_id)
    elif claims.get("hd"):
        domain_tenant = _domain_tenant(db, str(claims["hd"]))
        if domain_tenant is None:
            raise _refuse("unknown_domain", claims)
        if tenant_id is not None and domain_tenant != tenant_id:
            raise _refuse("tenant_mismatch", claims, signin_tenant=tenant_id)
        user = db.scalar(
            select(User).where(User.tenant_id == domain_tenant, User.email == email)
        )
        if user is None:
            user = User(
                id=uuid.uuid4(), tenant_id=domain_tenant, email=email, google_sub=sub,
                role="member", status="active",
            )
            db.add(user)
        elif user.google_sub is not None:
            raise _refuse("account_conflict", claims, domain_tenant, user.id)
        else:
            user = _bind(user, claims)
    elif tenant_id is not None:
        user = _invitation(db, email, tenant_id)
        if user is None:
            raise _refuse("not_invited", claims, signin_tenant=tenant_id)
        user = _bind(user, claims)
    else:
        invitations = _invitations(db, email)
        if not invitations:
            raise _refuse("not_invited", claims)
        raise ChooseTenant(email, invitations)
    if name:
        user.name = name
    return user
