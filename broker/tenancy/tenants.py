"""Tenants: creation with their first data key and invited admin, listing, deletion."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from broker import audit
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.keys import KeyService
from broker.models import Connection, Policy, Tenant, TenantDomain, User

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")


def normalise_email(email: str) -> str:
    """Return an email lower-cased and checked, or raise InvalidRequest."""
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise InvalidRequest(f"not an email address: {email!r}")
    return email


def normalise_domain(domain: str) -> str:
    """Return a domain lower-cased and checked, or raise InvalidRequest."""
    domain = domain.strip().lower().rstrip(".")
    if not DOMAIN.match(domain):
        raise InvalidRequest(f"not a domain name: {domain!r}")
    return domain


def get_tenant(session: Session, slug: str) -> Tenant:
    """Return the tenant with this slug, or raise NotFound."""
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"no tenant {slug!r}")
    return tenant


def tenant_by_id(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """Return the tenant with this id, or raise NotFound."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("no such organization")
    return tenant


def tenant_domains(session: Session, tenant: Tenant) -> list[str]:
    """Return a tenant's domains, sorted."""
    return sorted(
        session.scalars(select(TenantDomain.domain).where(TenantDomain.tenant_id == tenant.id))
    )


def create_tenant(
    session: Session,
    keys: KeyService,
    *,
    slug: str,
    name: str,
    domains: Iterable[str],
    admin_email: str,
    allow_consumer_accounts: bool = False,
    actor: str | None = None,
) -> Tenant:
    """Create a tenant, its policy, its first data key and its invited admin."""
    if not SLUG.match(slug):
        raise InvalidRequest(
            "slug must be 1-40 of a-z, 0-9 and '-', starting with a letter or digit"
        )
    clean_domains = sorted({normalise_domain(d) for d in domains})
    admin = normalise_email(admin_email)
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise Conflict(f"tenant {slug!r} already exists")
    for domain in clean_domains:
        owner = session.scalar(
            select(Tenant.slug)
            .join(TenantDomain, TenantDomain.tenant_id == Tenant.id)
            .where(TenantDomain.domain == domain)
        )
        if owner is not None:
            raise Conflict(f"domain {domain!r} already belongs to tenant {owner!r}")
    tenant = Tenant(slug=slug, name=name.strip() or slug,
                    allow_consumer_accounts=allow_consumer_accounts)
    session.add(tenant)
    session.flush()
    session.add_all(TenantDomain(domain=d, tenant_id=tenant.id) for d in clean_domains)
    session.add(Policy(tenant_id=tenant.id))
    session.add(User(tenant_id=tenant.id, email=admin, role="admin", status="invited"))
    keys.create_data_key(session, tenant.id)
    audit.record(
        session, action="tenant.create", tenant_id=tenant.id, actor_type="admin",
        actor_id=actor, details={"slug": slug, "domains": clean_domains, "admin": admin},
    )
    session.flush()
    return tenant


def connection_ids(session: Session, tenant: Tenant) -> list[uuid.UUID]:
    """Return the ids of a tenant's connections (to revoke before deleting it)."""
    return list(session.scalars(select(Connection.id).where(Connection.tenant_id == tenant.id)))


def delete_tenant(
    session: Session, keys: KeyService, tenant: Tenant, *, actor: str | None = None
) -> None:
    """Shred the tenant's data keys, then delete its rows (revoke its grants first)."""
    keys.shred_tenant(session, tenant.id)
    audit.record(
        session, action="tenant.delete", tenant_id=None, actor_type="admin", actor_id=actor,
        details={"slug": tenant.slug, "tenant_id": str(tenant.id)},
    )
    session.execute(delete(Tenant).where(Tenant.id == tenant.id))
