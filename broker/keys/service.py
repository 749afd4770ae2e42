"""Tenant data keys in the database: seal/open for rows, counting, rotation, re-seal, shredding."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection as DBConnection
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from broker.clock import Clock, utcnow
from broker.db import Database, retry_deadlocks
from broker.keys.sealed import (
    HEADER,
    Binding,
    CryptoError,
    Keyring,
    SealError,
    new_key,
    open_sealed,
    seal,
    sealed_version,
)
from broker.models import (
    AccessToken,
    AuditKey,
    Connection,
    DataKey,
    Tenant,
    Webhook,
    tenant_is,
)

if TYPE_CHECKING:
    from broker.driver import DriverConnection

SYSTEM = "system"
AUDIT = "(audit)"  # the cache slot of audit keys; never a tenant label

# The hand-out opens tokens on its own connection, which may be the bare driver's.
_TENANT_DEK = select(
    DataKey.tenant_id, DataKey.version, DataKey.wrapped, DataKey.master_key_id,
    DataKey.retired_at,
).where(DataKey.tenant_id == bindparam("tenant_id"), DataKey.version == bindparam("version"))


def tenant_label(tenant_id: uuid.UUID | None) -> str:
    """Return the tenant part of a key or value binding ('system' for the system key)."""
    return SYSTEM if tenant_id is None else str(tenant_id)


def dek_context(tenant_id: uuid.UUID | None, version: int) -> str:
    """Return the wrapping context (AAD prefix) of a data key."""
    return f"dek|{tenant_label(tenant_id)}|{version}"


@dataclass(frozen=True)
class MasterInfo:
    """One line of the crypto inventory: a master key and what it wraps (no key material)."""

    key_id: str
    provider: str
    location: str
    data_keys: int
    audit_keys: int
    exportable: bool
    primary: bool


@dataclass
class _Block:
    version: int
    key: bytes
    remaining: int
    expires: float


class KeyService:
    """Seal and open row values under per-tenant data keys wrapped by the master keyring."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        block: int = 1000,
        threshold: int = 2**30,
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Clock = utcnow,
    ) -> None:
        self.keyring = keyring
        self.block = block
        self.threshold = threshold
        self.cache_seconds = cache_seconds
        # `clock` measures cache lifetimes (monotonic); `wall_clock` stamps and ages key rows.
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self._deks: dict[tuple[str, int], tuple[bytes, float]] = {}
        # One lock per data key being unwrapped: a cold cache asks the key service once per
        # key per process, however many requests arrive together (single-flight).
        self._flights: dict[tuple[str, int], threading.Lock] = {}
        self._blocks: dict[str, _Block] = {}
        self.unwraps = 0  # data keys unwrapped by the key service (tests, bench)

    def forget(self) -> None:
        """Drop every cached data key (after retirement or shredding)."""
        with self._lock:
            self._deks.clear()
            self._blocks.clear()

    def check_wrapping(self, session: Session) -> None:
        """Refuse (CryptoError) unless the primary master key is the one live keys use.

        Every master key that wraps a live data or audit key must be in this keyring, and the
        keyring's primary among them: a key file that lacks the deployment's primary (or still
        names an older one first) would wrap a data key no other process can open (issue 12
        item 2). Checked before anything is written.
        """
        with session.no_autoflush:
            in_use = set(session.scalars(
                select(DataKey.master_key_id).where(DataKey.retired_at.is_(None)).distinct()
            )) | set(session.scalars(select(AuditKey.master_key_id).distinct()))
        if in_use - set(self.keyring.ids()):
            self.keyring.reload()  # another process may have added a key since we loaded
        source = self.keyring.provider.source
        missing = sorted(in_use - set(self.keyring.ids()))
        if missing:
            raise CryptoError(
                f"master key {missing[0]} wraps live keys but is not in {source}: "
                "use the current key source"
            )
        primary = self.keyring.primary_id
        if in_use and primary not in in_use:
            raise CryptoError(
                f"the primary master key {primary} of {source} wraps no live key (they use "
                f"{', '.join(sorted(in_use))}): run `broker keys rotate-master` first"
            )

    def create_data_key(self, session: Session, tenant_id: uuid.UUID | None) -> DataKey:
        """Add the next data key version of a tenant (or the system key), wrapped."""
        self.check_wrapping(session)
        with session.no_autoflush:
            newest = session.scalar(
                select(func.max(DataKey.version))
                .where(tenant_is(DataKey.tenant_id, tenant_id))
            )
        version = (newest or 0) + 1
        master_id, wrapped = self.keyring.wrap(new_key(), dek_context(tenant_id, version))
        row = DataKey(
            id=uuid.uuid4(), tenant_id=tenant_id, version=version, wrapped=wrapped,
            master_key_id=master_id, seal_count=0, created_at=self.wall_clock(),
        )
        # A Core insert, not session.add + flush: a flush would also push the caller's pending
        # rows, which may still be waiting for the value this key is about to seal.
        session.execute(insert(DataKey).values(
            id=row.id, tenant_id=tenant_id, version=version, wrapped=wrapped,
            master_key_id=master_id, seal_count=0, created_at=row.created_at,
        ))
        with self._lock:
            self._blocks.pop(tenant_label(tenant_id), None)
        return row

    def seal(
        self, session: Session, tenant_id: uuid.UUID | None, row_id: object, field: str,
        plaintext: bytes, *, bound: tuple[str, ...] = (),
    ) -> bytes:
        """Seal a value for one row and field of a tenant under its current data key."""
        block = self._take_seal(session, tenant_id)
        return seal(block.key, block.version, plaintext,
                    _binding(tenant_id, row_id, field, bound))

    def seal_ready(
        self, tenant_id: uuid.UUID | None, row_id: object, field: str, plaintext: bytes, *,
        bound: tuple[str, ...] = (),
    ) -> bytes | None:
        """Seal from this process's reserved nonce block without the database; None when a
        block must be reserved first (then `seal`, in a transaction)."""
        now = self.clock()
        with self._lock:
            block = self._blocks.get(tenant_label(tenant_id))
            if not (block and block.remaining > 0 and block.expires > now):
                return None
            block.remaining -= 1
        return seal(block.key, block.version, plaintext,
                    _binding(tenant_id, row_id, field, bound))

    def open(
        self, session: Session, tenant_id: uuid.UUID | None, row_id: object, field: str,
        blob: bytes, *, bound: tuple[str, ...] = (),
    ) -> bytes:
        """Open a sealed value of one row and field, or raise SealError."""
        key = self._dek(session, tenant_id, sealed_version(blob))
        return open_sealed(key, blob, _binding(tenant_id, row_id, field, bound))

    def _take_seal(self, session: Session, tenant_id: uuid.UUID | None) -> _Block:
        label = tenant_label(tenant_id)
        now = self.clock()
        with self._lock:
            block = self._blocks.get(label)
            if block and block.remaining > 0 and block.expires > now:
                block.remaining -= 1
                return block
        # Reserve a whole block in the caller's transaction: the count bounds how many nonces a
        # key has used, and a rolled-back reservation only ever over-counts in memory. No
        # autoflush: the caller's pending row is still waiting for the value being sealed.
        with session.no_autoflush:
            return self._reserve(session, tenant_id, label, now)

    def _reserve(
        self, session: Session, tenant_id: uuid.UUID | None, label: str, now: float
    ) -> _Block:
        row = session.scalar(
            select(DataKey)
            .where(tenant_is(DataKey.tenant_id, tenant_id), DataKey.retired_at.is_(None))
            .order_by(DataKey.version.desc())
            .limit(1)
            .with_for_update()
        )
        if row is None or row.seal_count + self.block > self.threshold:
            row = self.create_data_key(session, tenant_id)
        session.execute(
            update(DataKey)
            .where(DataKey.id == row.id)
            .values(seal_count=DataKey.seal_count + self.block)
        )
        key = self._unwrap(row)
        block = _Block(row.version, key, self.block - 1, now + self.cache_seconds)
        with self._lock:
            self._blocks[label] = block
        return block

    def open_on(
        self, conn: DBConnection | DriverConnection, tenant_id: uuid.UUID, row_id: object,
        field: str, blob: bytes, *, bound: tuple[str, ...] = (),
    ) -> bytes:
        """Open a tenant's sealed value, reading its data key on `conn` only if not cached."""
        version = sealed_version(blob)
        key = self._cached(tenant_id, version)
        if key is None:
            found = conn.execute(_TENANT_DEK, {"tenant_id": tenant_id, "version": version}).all()
            key = self._usable(found[0] if found else None)
        return open_sealed(key, blob, _binding(tenant_id, row_id, field, bound))

    def _cached(self, tenant_id: uuid.UUID | None, version: int) -> bytes | None:
        with self._lock:
            cached = self._deks.get((tenant_label(tenant_id), version))
        return cached[0] if cached and cached[1] > self.clock() else None

    def _dek(self, session: Session, tenant_id: uuid.UUID | None, version: int) -> bytes:
        cached = self._cached(tenant_id, version)
        if cached is not None:
            return cached
        with session.no_autoflush:
            row = session.scalar(
                select(DataKey).where(
                    tenant_is(DataKey.tenant_id, tenant_id), DataKey.version == version
                )
            )
        return self._usable(row)

    def _usable(self, row: Any) -> bytes:
        """Unwrap a data key row (ORM or Core) unless it is missing or retired."""
        if row is None or row.retired_at is not None or not row.wrapped:
            raise SealError("the data key of this sealed value is gone")
        return self._unwrap(row)

    def _unwrap(self, row: Any) -> bytes:
        slot = (tenant_label(row.tenant_id), row.version)
        with self._lock:
            flight = self._flights.setdefault(slot, threading.Lock())
        with flight:
            cached = self._cached(row.tenant_id, row.version)
            if cached is not None:
                return cached  # another thread unwrapped it while this one waited
            key = self.keyring.unwrap(
                row.master_key_id, row.wrapped, dek_context(row.tenant_id, row.version)
            )
            with self._lock:
                self._deks[slot] = (key, self.clock() + self.cache_seconds)
                self.unwraps += 1
        return key

    def rotate_tenant(self, session: Session, tenant_id: uuid.UUID | None) -> int:
        """Make a new data key for new writes; old rows move when re-sealed."""
        return self.create_data_key(session, tenant_id).version

    def current_version(self, session: Session, tenant_id: uuid.UUID | None) -> int | None:
        """Return the newest live data key version of a tenant."""
        return session.scalar(
            select(func.max(DataKey.version)).where(
                tenant_is(DataKey.tenant_id, tenant_id), DataKey.retired_at.is_(None)
            )
        )

    def rewrap_all(self, session: Session) -> int:
        """Rewrap every data and audit key not under the primary master key; return the count."""
        primary = self.keyring.primary_id
        count = 0
        for dek in session.scalars(
            select(DataKey).where(DataKey.master_key_id != primary, DataKey.retired_at.is_(None))
        ):
            context = dek_context(dek.tenant_id, dek.version)
            plain = self.keyring.unwrap(dek.master_key_id, dek.wrapped, context)
            dek.master_key_id, dek.wrapped = self.keyring.wrap(plain, context)
            count += 1
        for akey in session.scalars(select(AuditKey).where(AuditKey.master_key_id != primary)):
            context = audit_context(akey.version)
            plain = self.keyring.unwrap(akey.master_key_id, akey.wrapped, context)
            akey.master_key_id, akey.wrapped = self.keyring.wrap(plain, context)
            count += 1
        return count

    def master_key_users(self, session: Session, key_id: str) -> int:
        """Count the live data and audit keys still wrapped by a master key."""
        deks = session.scalar(
            select(func.count())
            .select_from(DataKey)
            .where(DataKey.master_key_id == key_id, DataKey.retired_at.is_(None))
        )
        akeys = session.scalar(
            select(func.count()).select_from(AuditKey).where(AuditKey.master_key_id == key_id)
        )
        return int(deks or 0) + int(akeys or 0)

    def inventory(self, session: Session) -> list[MasterInfo]:
        """Describe every master: provider, where it lives, what it wraps, whether exportable."""
        deks: dict[str, int] = {
            master: count for master, count in session.execute(
                select(DataKey.master_key_id, func.count())
                .where(DataKey.retired_at.is_(None)).group_by(DataKey.master_key_id)
            )
        }
        akeys: dict[str, int] = {
            master: count for master, count in session.execute(
                select(AuditKey.master_key_id, func.count()).group_by(AuditKey.master_key_id)
            )
        }
        return [
            MasterInfo(m.key_id, m.provider, m.location, int(deks.get(m.key_id, 0)),
                       int(akeys.get(m.key_id, 0)), m.exportable, index == 0)
            for index, m in enumerate(self.keyring.masters())
        ]

    def check(self, session: Session) -> list[str]:
        """Unwrap every live data and audit key (read-only); return what does not open."""
        problems = []
        rows = session.execute(
            select(DataKey, Tenant.slug).outerjoin(Tenant, Tenant.id == DataKey.tenant_id)
            .where(DataKey.retired_at.is_(None)).order_by(Tenant.slug, DataKey.version)
        ).all()
        for dek, slug in rows:
            context = dek_context(dek.tenant_id, dek.version)
            problem = self._opens(dek.master_key_id, dek.wrapped, context)
            if problem:
                problems.append(f"{slug or '(system)'} data key v{dek.version} "
                                f"(master {dek.master_key_id}): {problem}")
        for akey in session.scalars(select(AuditKey).order_by(AuditKey.version)):
            problem = self._opens(akey.master_key_id, akey.wrapped, audit_context(akey.version))
            if problem:
                problems.append(f"audit key v{akey.version} (master {akey.master_key_id}): "
                                f"{problem}")
        return problems

    def _opens(self, master_id: str, wrapped: bytes, context: str) -> str | None:
        try:
            self.keyring.unwrap(master_id, wrapped, context)
        except CryptoError as exc:
            return str(exc)
        return None

    def shred_tenant(self, session: Session, tenant_id: uuid.UUID) -> int:
        """Delete every data key of a tenant: its sealed values can never open again."""
        rows = list(session.scalars(select(DataKey).where(DataKey.tenant_id == tenant_id)))
        for row in rows:
            session.delete(row)
        self.forget()
        return len(rows)

    def audit_key(self, session: Session, version: int | None = None) -> tuple[int, bytes]:
        """Return (version, key) of the audit MAC key: the newest, or a given version."""
        query = select(AuditKey).order_by(AuditKey.version.desc()).limit(1)
        if version is not None:
            query = select(AuditKey).where(AuditKey.version == version)
        row = session.scalar(query)
        if row is None:
            if version is not None:
                raise SealError(f"audit key version {version} is gone")
            master_id, wrapped = self.keyring.wrap(key := new_key(), audit_context(1))
            session.add(AuditKey(version=1, wrapped=wrapped, master_key_id=master_id))
            session.flush()
            return 1, key
        # Cached like a data key: the chainer must keep working through a key service outage.
        with self._lock:
            cached = self._deks.get((AUDIT, row.version))
        if cached and cached[1] > self.clock():
            return row.version, cached[0]
        key = self.keyring.unwrap(row.master_key_id, row.wrapped, audit_context(row.version))
        with self._lock:
            self._deks[(AUDIT, row.version)] = (key, self.clock() + self.cache_seconds)
        return row.version, key


def audit_context(version: int) -> str:
    """Return the wrapping context of an audit key."""
    return f"audit|{version}"


def _binding(
    tenant_id: uuid.UUID | None, row_id: object, field: str, bound: tuple[str, ...] = ()
) -> Binding:
    return Binding(tenant_label(tenant_id), str(row_id), field, bound)


def access_token_bound(connection_id: object, scope_key: str) -> tuple[str, ...]:
    """Return what an access token is bound to beyond its row id: its connection, scope key."""
    return (str(connection_id), scope_key)


@dataclass
class ResealReport:
    """What a re-seal pass of one tenant did."""

    resealed: int = 0
    unreadable: int = 0
    retired: tuple[int, ...] = ()


def _version_bytes(column: Any) -> Any:
    """Return the SQL expression of a sealed column's 4 data-key-version bytes."""
    return func.substr(column, 2, 4)


def _unbound(row: Any) -> tuple[str, ...]:
    return ()


def _token_bound(row: Any) -> tuple[str, ...]:
    return access_token_bound(row.connection_id, row.scope_key)


Bound = Callable[[Any], tuple[str, ...]]


def _sealed_columns(tenant_id: uuid.UUID) -> list[tuple[Any, str, str, Any, Bound]]:
    """Return (model, attribute, field, tenant filter, binding) for a tenant's sealed columns."""
    of_tenant = select(Connection.id).where(Connection.tenant_id == tenant_id)
    return [
        (Connection, "refresh_token", "refresh_token", Connection.tenant_id == tenant_id,
         _unbound),
        (AccessToken, "token", "access_token", AccessToken.connection_id.in_(of_tenant),
         _token_bound),
        (Webhook, "secret", "webhook_secret", Webhook.tenant_id == tenant_id, _unbound),
    ]


def _versions_in_use(session: Session, tenant_id: uuid.UUID) -> set[int]:
    used: set[int] = set()
    for model, attr, _field, of_tenant, _bound in _sealed_columns(tenant_id):
        column = getattr(model, attr)
        for raw in session.scalars(
            select(_version_bytes(column)).where(of_tenant, column.is_not(None)).distinct()
        ):
            if raw is not None and len(raw) == HEADER.size - 1:
                used.add(int.from_bytes(raw, "big"))
    return used


def reseal_tenant(
    keys: KeyService, db: Database, tenant_id: uuid.UUID, batch: int = 200
) -> ResealReport:
    """Re-seal a tenant's rows under its newest key in short batches, then retire unused keys.

    Only rows whose header names an older key are read, and they are locked while re-sealed so
    a concurrent refresh is never overwritten. Idempotent: a pass killed halfway is run again.
    """
    report = ResealReport()
    unreadable: set[tuple[str, object]] = set()

    def one_batch() -> int | None:
        """Re-seal up to `batch` rows in one transaction; None when the tenant has no key."""
        done = 0
        with db.transaction() as session:
            current = keys.current_version(session, tenant_id)
            if current is None:
                return None
            header = current.to_bytes(4, "big")
            for model, attr, field, of_tenant, bound in _sealed_columns(tenant_id):
                column = getattr(model, attr)
                skip = [key for name, key in unreadable if name == model.__name__]
                rows = session.scalars(
                    select(model)
                    .where(of_tenant, column.is_not(None),
                           _version_bytes(column) != header, model.id.not_in(skip))
                    .limit(batch - done)
                    .with_for_update()  # wait for a refresh in flight; never skip its row
                ).all()
                for row in rows:
                    try:
                        plain = keys.open(session, tenant_id, row.id, field,
                                          getattr(row, attr), bound=bound(row))
                    except SealError:
                        unreadable.add((model.__name__, row.id))
                        continue
                    setattr(row, attr, keys.seal(session, tenant_id, row.id, field,
                                                 plain, bound=bound(row)))
                    done += 1
                if done >= batch:
                    break
        return done

    while True:
        # A refresh stores its connection and token rows while a batch locks them too; a
        # batch failed to break such a cycle is idempotent: it runs again.
        done_in_batch = retry_deadlocks(one_batch)
        if done_in_batch is None:
            return report
        report.resealed += done_in_batch
        if done_in_batch:
            continue
        report.unreadable = len(unreadable)
        with db.transaction() as session:
            report.retired = tuple(retire_unused(keys, session, tenant_id))
        return report


def retire_unused(keys: KeyService, session: Session, tenant_id: uuid.UUID) -> list[int]:
    """Retire a tenant's older data keys that no row names any more.

    A key is kept until its successor is older than the data-key cache, because another
    process may still be sealing new rows under the block it cached before the rotation.
    """
    current = keys.current_version(session, tenant_id)
    if current is None:
        return []
    newest = session.scalar(
        select(DataKey).where(DataKey.tenant_id == tenant_id, DataKey.version == current)
    )
    now = keys.wall_clock()
    grace = dt.timedelta(seconds=keys.cache_seconds)
    if newest is None or newest.created_at > now - grace:
        return []
    used = _versions_in_use(session, tenant_id)
    retired = []
    for dek in session.scalars(
        select(DataKey).where(
            DataKey.tenant_id == tenant_id, DataKey.retired_at.is_(None),
            DataKey.version < current,
        )
    ):
        if dek.version not in used:
            dek.retired_at, dek.wrapped = now, b""
            retired.append(dek.version)
    keys.forget()
    return retired
