"""Bulk-load tenants, users, connections and access tokens, each value sealed for its own row."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Table

from bench.copy import CopyRows
from broker.db import Database
from broker.keys.sealed import Binding, EnvKeyProvider, Keyring, seal
from broker.keys.service import KeyService, access_token_bound, dek_context, tenant_label
from broker.migrate import upgrade
from broker.models import AccessToken, Connection, User
from broker.scopes import PREFIX
from broker.tenancy.clients import create_client
from broker.tenancy.tenants import create_tenant

SCOPES = [PREFIX + "gmail.readonly"]
BATCH = 20_000
# Google's access tokens are a few hundred bytes; a realistic size keeps rows realistic.
TOKEN_PAD = "x" * 160


@dataclass(frozen=True)
class TenantInfo:
    """A loaded tenant and the API client the load uses for it."""

    id: uuid.UUID
    slug: str
    domain: str
    client_id: str
    client_secret: str


def email(tenants: Sequence[TenantInfo], index: int) -> str:
    """Return the email of user `index` (users are spread over tenants round-robin)."""
    return f"u{index}@{tenants[index % len(tenants)].domain}"


def key_service(master_keys: str) -> KeyService:
    """Return a KeyService on the run's master keyring."""
    return KeyService(Keyring(EnvKeyProvider(master_keys)))


def prepare(url: str, keys: KeyService, tenants: int, prefix: str = "t",
            scopes: Sequence[str] = tuple(SCOPES)) -> list[TenantInfo]:
    """Create the schema, then tenants with their data key and one API client each."""
    database = Database(url)
    try:
        upgrade(database.engine)
        out = []
        with database.transaction() as session:
            for number in range(tenants):
                slug, domain = f"{prefix}{number}", f"{prefix}{number}.bench.test"
                tenant = create_tenant(session, keys, slug=slug, name=slug, domains=[domain],
                                       admin_email=f"admin@{domain}")
                issued = create_client(session, tenant, name="bench", scopes=list(scopes))
                out.append(TenantInfo(tenant.id, slug, domain, issued.client_id,
                                      issued.client_secret))
        return out
    finally:
        database.dispose()


def libpq(url: str) -> str:
    """Return a SQLAlchemy psycopg URL as libpq (and psycopg.connect) spells it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _reserve(conn: psycopg.Connection[Any], keys: KeyService, tenant_id: uuid.UUID,
             seals: int) -> tuple[int, bytes]:
    """Count `seals` nonces against the tenant's current data key and return (version, key)."""
    row = conn.execute(
        "UPDATE data_keys SET seal_count = seal_count + %s WHERE id = (SELECT id FROM data_keys"
        " WHERE tenant_id = %s AND retired_at IS NULL ORDER BY version DESC LIMIT 1)"
        " RETURNING version, wrapped, master_key_id", (seals, tenant_id),
    ).fetchone()
    if row is None:
        raise RuntimeError(f"tenant {tenant_id} has no data key")
    version, wrapped, master_id = row
    key = keys.keyring.unwrap(master_id, wrapped, dek_context(tenant_id, version))
    return int(version), key


@dataclass
class Load:
    """What to write for users start..stop-1 of a tenant set."""

    tenants: Sequence[TenantInfo]
    start: int
    stop: int
    token_expires_at: dt.datetime
    last_used_at: dt.datetime | None = None
    refresh_token: Callable[[int], str] = lambda i: f"1//bench-refresh-{i}"
    access_token: Callable[[int], str] = lambda i: f"ya29.bench-{i}-{TOKEN_PAD}"
    granted: Sequence[str] = tuple(SCOPES)  # what the connections hold (the stored token: SCOPES)


def _copy(conn: psycopg.Connection[Any], rows: CopyRows, lines: list[str]) -> None:
    with conn.cursor().copy(rows.statement) as copy:
        copy.write("".join(lines))


def bulk_load(url: str, keys: KeyService, load: Load, log: Callable[[str], None] = print) -> float:
    """Write users, connections and access tokens with COPY in batches; return seconds taken."""
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    count = load.stop - load.start
    tables: dict[str, Table] = {
        "users": User.__table__, "connections": Connection.__table__,  # type: ignore[dict-item]
        "tokens": AccessToken.__table__,  # type: ignore[dict-item]
    }
    users = CopyRows(tables["users"], ["id", "tenant_id", "email", "google_sub"], {
        "name": "Bench User", "role": "member", "status": "active", "last_login_at": now,
        "created_at": now,
    })
    conns = CopyRows(tables["connections"],
                     ["id", "tenant_id", "user_id", "google_sub", "email", "refresh_token"], {
        "granted_scopes": list(load.granted), "status": "active", "version": 0,
        "last_refresh_at": now,
        "last_used_at": load.last_used_at, "created_at": now, "updated_at": now,
    })
    tokens = CopyRows(tables["tokens"], ["connection_id", "id", "token"], {
        "scope_key": " ".join(SCOPES), "scopes": SCOPES, "expires_at": load.token_expires_at,
        "obtained_at": min(now, load.token_expires_at - dt.timedelta(seconds=3599)),
    })
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        per_tenant = [0] * len(load.tenants)
        for i in range(load.start, load.stop):
            per_tenant[i % len(load.tenants)] += 2
        deks = {t.id: _reserve(conn, keys, t.id, n)
                for t, n in zip(load.tenants, per_tenant, strict=True) if n}
        # Our rows reference each other consistently; skipping the FK triggers is what makes
        # a million rows load in a minute instead of ten.
        conn.execute("SET session_replication_role = replica")
        for low in range(load.start, load.stop, BATCH):
            high = min(load.stop, low + BATCH)
            lines: dict[str, list[str]] = {"users": [], "conns": [], "tokens": []}
            for i in range(low, high):
                tenant = load.tenants[i % len(load.tenants)]
                version, key = deks[tenant.id]
                label = tenant_label(tenant.id)
                user_id, conn_id, token_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
                mail, sub = email(load.tenants, i), f"bench-sub-{tenant.slug}-{i}"
                sealed_refresh = seal(key, version, load.refresh_token(i).encode(),
                                      Binding(label, str(conn_id), "refresh_token"))
                sealed_access = seal(key, version, load.access_token(i).encode(),
                                     Binding(label, str(token_id), "access_token",
                                             access_token_bound(conn_id, " ".join(SCOPES))))
                lines["users"].append(users.line((user_id, tenant.id, mail, sub)))
                lines["conns"].append(conns.line(
                    (conn_id, tenant.id, user_id, sub, mail, sealed_refresh)))
                lines["tokens"].append(tokens.line((conn_id, token_id, sealed_access)))
            _copy(conn, users, lines["users"])
            _copy(conn, conns, lines["conns"])
            _copy(conn, tokens, lines["tokens"])
            if (high - load.start) % (BATCH * 10) == 0 or high == load.stop:
                log(f"  loaded {high - load.start:,}/{count:,} users "
                    f"({time.monotonic() - started:.0f}s)")
        conn.execute("ANALYZE users; ANALYZE connections; ANALYZE access_tokens")
    return time.monotonic() - started


def check_open(url: str, keys: KeyService, tenants: Sequence[TenantInfo], index: int) -> str:
    """Open user `index`'s stored access token with the broker's own KeyService."""
    database = Database(url)
    try:
        from sqlalchemy import select

        with database.transaction(write=False) as session:
            row = session.execute(
                select(AccessToken, Connection.tenant_id)
                .join(Connection, Connection.id == AccessToken.connection_id)
                .where(Connection.email == email(tenants, index))
            ).one()
            token, tenant_id = row
            return keys.open(session, tenant_id, token.id, "access_token", token.token,
                             bound=access_token_bound(token.connection_id, token.scope_key)
                             ).decode()
    finally:
        database.dispose()

