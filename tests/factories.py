"""Small factories for rows tests need."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import Flask

from broker.clock import utcnow
from broker.db import get_db
from broker.keys import refresh_token_ids
from broker.keys.extension import get_keys
from broker.models import Connection, Tenant, User
from broker.tenancy.tenants import create_tenant


def make_tenant(
    app: Flask, slug: str | None = None, *, domains: tuple[str, ...] | None = None,
    admin: str | None = None, **kwargs: Any,
) -> Tenant:
    """Create a tenant with its data key and invited admin."""
    slug = slug or f"t{uuid.uuid4().hex[:8]}"
    with get_db(app).transaction() as session:
        tenant = create_tenant(
            session, get_keys(app), slug=slug, name=slug.title(),
            domains=domains if domains is not None else (f"{slug}.test",),
            admin_email=admin or f"admin@{slug}.test", **kwargs,
        )
    return tenant


def make_user(
    app: Flask, tenant: Tenant, email: str | None = None, *, role: str = "member",
    status: str = "active", google_sub: str | None = None,
    last_login_at: dt.datetime | None = None,
) -> User:
    """Create a user of a tenant, active and signed in by default."""
    email = email or f"u{uuid.uuid4().hex[:8]}@{tenant.slug}.test"
    with get_db(app).transaction() as session:
        user = User(
            tenant_id=tenant.id, email=email, role=role, status=status,
            google_sub=google_sub or f"sub-{uuid.uuid4().hex}",
            last_login_at=last_login_at or utcnow(),
        )
        session.add(user)
    return user


def make_connection(
    app: Flask, user: User, *, refresh_token: str = "1//test-refresh", scopes: list[str],
    status: str = "active",
) -> Connection:
    """Create a connection with a sealed refresh token."""
    with get_db(app).transaction() as session:
        connection = Connection(
            tenant_id=user.tenant_id, user_id=user.id, google_sub=user.google_sub or "",
            email=user.email, granted_scopes=scopes, status=status,
        )
        connection.id = uuid.uuid4()
        connection.refresh_token = get_keys(app).seal(
            session, user.tenant_id, connection.id, "refresh_token", refresh_token.encode()
        )
        for column, value in refresh_token_ids(refresh_token).items():
            setattr(connection, column, value)
        session.add(connection)
    return connection
