"""The keyed audit chains: append in insertion order, verify, and sign checkpoints (§10).

Every event belongs to one chain (`chain_id`: its tenant's id, or SYSTEM_CHAIN). The chainer
appends waiting events in `seq` order (the database's insertion order) and refuses, leaving
unchained and alarming, an event that arrives below the chained history or dated well before
its chain's head: what a database writer who cannot compute the MAC would have to do to slip
an event into the past. A checkpoint is one MAC over every chain's head as of a `seq`;
recorded outside the database, it proves later that no chained suffix was cut or rewritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ScalarSelect, Select, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.clock import utcnow
from broker.errors import InvalidRequest
from broker.metrics import AUDIT_TAMPER, CHECKPOINT_STATE
from broker.models import SYSTEM_CHAIN, AuditEvent, WorkerState

if TYPE_CHECKING:
    from broker.keys import KeyService

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = re.compile(r"^(\d{1,18}):([0-9a-f]{12,64})$")
# How many refused events one alarm line names.
NAMED = 20
EVENTS = cast(Table, AuditEvent.__table__)
# The chainer's write: one statement for a whole batch (executemany), not an ORM flush.
APPEND = (
    update(EVENTS).where(EVENTS.c.id == bindparam("event_id"))
    .values(chain_seq=bindparam("place"), mac_key_version=bindparam("version"),
            prev_mac=bindparam("prev"), mac=bindparam("sealed"))
)


@dataclass(frozen=True)
class ChainWindows:
    """How old an event must be before it is chained, and how late it may arrive."""

    # `at` is stamped before its transaction commits: the lag lets such late commits land
    # before the chain passes their time.
    audit_lag: dt.timedelta = dt.timedelta(seconds=2)
    # Beyond the lag, how far an event may predate its chain's head (clocks of different
    # processes, slow transactions) before the chainer calls it back-dated.
    audit_tamper_margin: dt.timedelta = dt.timedelta(seconds=60)

    @property
    def audit_tolerance(self) -> dt.timedelta:
        """Return how much older than its chain's head a waiting event may be."""
        return self.audit_lag + self.audit_tamper_margin


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of every chain's head as of one insertion sequence number."""

    seq: int
    mac: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.mac}"

    @property
    def mac48(self) -> int:
        """Return the MAC's first 48 bits (exact in a float, for a metric)."""
        return int(self.mac[:12], 16)


@dataclass
class Chained:
    """What one chaining pass did."""

    chained: int = 0
    refused: list[tuple[uuid.UUID, str]] = field(default_factory=list)


def chain_key(tenant_id: uuid.UUID | None) -> uuid.UUID:
    """Return the chain id of a tenant's events (SYSTEM_CHAIN for None)."""
    return tenant_id or SYSTEM_CHAIN


def canonical(event: Mapping[Any, Any]) -> bytes:
    """Return the bytes an event's MAC covers: every recorded field and its place in the chain."""
    # The chain id stands in for tenant_id: the same bytes as before chain ids existed, and
    # unchanged when a deleted tenant's events lose their tenant_id.
    chain = None if event["chain_id"] == SYSTEM_CHAIN else str(event["chain_id"])
    subject = event["subject_user_id"]
    fields = {
        "id": str(event["id"]), "tenant_id": chain, "at": event["at"].isoformat(),
        "actor_type": event["actor_type"], "actor_id": event["actor_id"],
        "action": event["action"], "subject_user_id": str(subject) if subject else None,
        "ip": event["ip"], "outcome": event["outcome"], "reason": event["reason"],
        "scopes": list(event["scopes"] or []), "request_id": event["request_id"],
        "details": event["details"] or {}, "chain_seq": event["chain_seq"],
        "mac_key_version": event["mac_key_version"],
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()


def compute_mac(key: bytes, prev_mac: str, event: Mapping[Any, Any]) -> str:
    """Return HMAC-SHA256(audit key, prev_mac | canonical event) in hex."""
    return hmac.new(key, prev_mac.encode() + b"|" + canonical(event), hashlib.sha256).hexdigest()


def chained_top(session: Session) -> int:
    """Return the highest chained `seq` (0 when nothing is chained)."""
    return int(session.scalar(
        select(func.max(AuditEvent.seq)).where(AuditEvent.chain_seq.is_not(None))
    ) or 0)


def locked_state(session: Session, name: str, initial: str) -> WorkerState:
    """Return the WorkerState row `name` locked until commit, made on the very first pass."""
    row = session.get(WorkerState, name, with_for_update=True)
    if row is not None:
        return row
    # Two workers' first passes both find no row: a plain INSERT failed the second one with
    # an IntegrityError. This one waits for the first's commit, then inserts nothing.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(WorkerState).values(name=name, value=initial, updated_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["name"]))
    row = session.get(WorkerState, name, with_for_update=True, populate_existing=True)
    if row is None:
        raise RuntimeError(f"worker state {name!r} vanished")  # deleted at once: never ours
    return row


def _lock_chains(session: Session) -> WorkerState:
    """Hold the chainer's lock (a WorkerState row, which also keeps the last checkpoint)."""
    return locked_state(session, CHECKPOINT_STATE, "")


@dataclass
class _Head:
    chain_seq: int
    mac: str
    at: dt.datetime | None


def _newest(chain_id: Any, *columns: Any) -> Select[Any]:
    """Select `columns` of a chain's newest chained event."""
    return (
        select(*columns).where(AuditEvent.chain_id == chain_id, AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq.desc()).limit(1)
    )


def _head(session: Session, chain_id: uuid.UUID) -> _Head:
    row = session.execute(
        _newest(chain_id, AuditEvent.chain_seq, AuditEvent.mac, AuditEvent.at)
    ).one_or_none()
    return _Head(int(row[0] or 0), row[1] or "", row[2]) if row else _Head(0, "", None)


def late_events(
    session: Session, top: int, chain_id: uuid.UUID | None = None, limit: int = NAMED
) -> tuple[int, list[uuid.UUID]]:
    """Count waiting events below the chained history (and name the first few)."""
    where = [AuditEvent.chain_seq.is_(None), AuditEvent.seq < top]
    if chain_id is not None:
        where.append(AuditEvent.chain_id == chain_id)
    count = int(session.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0)
    ids = list(session.scalars(
        select(AuditEvent.id).where(*where).order_by(AuditEvent.seq).limit(limit)
    )) if count else []
    return count, ids


def chain(
    session: Session, keys: KeyService, *, older_than: dt.datetime,
    windows: ChainWindows | None = None, batch: int = 500,
) -> Chained:
    """Append waiting events older than `older_than` to their chains, in insertion order."""
    w = windows or ChainWindows()
    _lock_chains(session)
    top = chained_top(session)
    done = Chained()
    count, late = late_events(session, top)
    done.refused += [(event_id, "inserted below the chained history") for event_id in late]
    # A younger event with a lower seq is still settling: chaining past it would leave it
    # below the history for good, so stop there. One dated beyond any clock difference does
    # not hold the chain up (it is refused once the chain passes it).
    settling = session.scalar(
        select(func.min(AuditEvent.seq)).where(
            AuditEvent.chain_seq.is_(None), AuditEvent.seq > top,
            AuditEvent.at >= older_than, AuditEvent.at <= older_than + w.audit_tolerance,
        )
    )
    # Plain rows, not ORM objects: loading and flushing 500 of those was most of the pass.
    query = select(EVENTS).where(
        AuditEvent.chain_seq.is_(None), AuditEvent.seq > top, AuditEvent.at < older_than
    )
    if settling is not None:
        query = query.where(AuditEvent.seq < settling)
    events = session.execute(query.order_by(AuditEvent.seq).limit(batch)).mappings().all()
    version, key = keys.audit_key(session) if events else (0, b"")
    heads: dict[uuid.UUID, _Head] = {}
    appended: list[dict[str, Any]] = []
    for event in events:
        chain_id = event["chain_id"]
        head = heads.get(chain_id) or _head(session, chain_id)
        heads[chain_id] = head
        if head.at is not None and event["at"] < head.at - w.audit_tolerance:
            done.refused.append((event["id"], "dated before its chain's head"))
            continue
        place = head.chain_seq + 1
        mac = compute_mac(key, head.mac, {**event, "chain_seq": place, "mac_key_version": version})
        appended.append({"event_id": event["id"], "place": place, "version": version,
                         "prev": head.mac, "sealed": mac})
        heads[chain_id] = _Head(place, mac, event["at"])
    if appended:
        session.execute(APPEND, appended)
    done.chained = len(appended)
    if done.refused:
        total = count + len(done.refused) - len(late)
        AUDIT_TAMPER.inc(total)
        log.error(
            "audit events refused by the chainer (%d): %s", total,
            ", ".join(f"{event_id} {why}" for event_id, why in done.refused[:NAMED]),
            extra={"event": "audit_tamper", "refused": total},
        )
    return done


def _heads_as_of(top: int) -> Select[uuid.UUID, int | None, str | None]:
    """Select every chain's head among the events up to `top`: a scan of that history."""
    tops = (
        select(AuditEvent.chain_id, func.max(AuditEvent.chain_seq).label("chain_seq"))
        .where(AuditEvent.chain_seq.is_not(None), AuditEvent.seq <= top)
        .group_by(AuditEvent.chain_id).subquery()
    )
    return (
        select(AuditEvent.chain_id, AuditEvent.chain_seq, AuditEvent.mac)
        .join(tops, (AuditEvent.chain_id == tops.c.chain_id)
              & (AuditEvent.chain_seq == tops.c.chain_seq))
    )


def _chain_after(chain_id: Any) -> ScalarSelect[uuid.UUID]:
    """Select the first chain id after `chain_id` (None: the first) with a chained event."""
    query = select(AuditEvent.chain_id).where(AuditEvent.chain_seq.is_not(None))
    if chain_id is not None:
        query = query.where(AuditEvent.chain_id > chain_id)
    return query.order_by(AuditEvent.chain_id).limit(1).scalar_subquery()


def _current_heads() -> Select[uuid.UUID, int | None, str | None]:
    """Select every chain's head now: one probe of ix_audit_events_chain per chain.

    A GROUP BY over the history (`_heads_as_of`) grows with every event, and the chainer
    signs a checkpoint after each batch. Walking the index from chain id to chain id (a
    recursive CTE) costs the same with a million events as with ten.
    """
    chains = select(_chain_after(None).label("id")).cte("chains", recursive=True)
    chains = chains.union_all(select(_chain_after(chains.c.id)).where(chains.c.id.is_not(None)))
    chain_id = chains.c.id
    return select(
        chain_id, _newest(chain_id, AuditEvent.chain_seq).scalar_subquery(),
        _newest(chain_id, AuditEvent.mac).scalar_subquery(),
    ).where(chain_id.is_not(None))


def checkpoint(session: Session, keys: KeyService, as_of: int | None = None) -> Checkpoint | None:
    """Sign every chain's head as of `as_of` (default: the chained top); None if none there."""
    top = chained_top(session) if as_of is None else as_of
    version = session.scalar(
        select(AuditEvent.mac_key_version)
        .where(AuditEvent.seq == top, AuditEvent.chain_seq.is_not(None))
    )
    if version is None:
        return None
    # Chaining goes in seq order, so at the chained top every chain's head is its newest.
    heads = session.execute(_current_heads() if as_of is None else _heads_as_of(top)).all()
    lines = sorted(f"{chain_id}:{chain_seq}:{mac}" for chain_id, chain_seq, mac in heads)
    message = "\n".join(["broker-audit-checkpoint/1", str(top), *lines]).encode()
    key = keys.audit_key(session, version)[1]
    return Checkpoint(top, hmac.new(key, message, hashlib.sha256).hexdigest())


def keep_checkpoint(session: Session, keys: KeyService) -> Checkpoint | None:
    """Sign the current checkpoint and keep it for /metrics (log it once committed)."""
    point = checkpoint(session, keys)
    if point is not None:
        _lock_chains(session).value = str(point)
    return point


def log_checkpoint(point: Checkpoint) -> None:
    """Publish a committed checkpoint as a JSON log line, to be kept outside the database."""
    log.info("audit checkpoint %s", point, extra={
        "event": "audit_checkpoint", "seq": point.seq, "mac": point.mac,
    })


def parse_checkpoint(text: str) -> tuple[int, str]:
    """Read `SEQ:MAC` (MAC in hex, at least its first 12 digits); raise InvalidRequest."""
    found = CHECKPOINT_FORMAT.match(text.strip().lower())
    if not found:
        raise InvalidRequest("a checkpoint is SEQ:MAC, e.g. 1234:9f86d081884c (hex, 12+ digits)")
    return int(found[1]), found[2]


def check_checkpoint(session: Session, keys: KeyService, expected: str) -> str:
    """Return what is wrong with the history up to a recorded checkpoint ("" when intact)."""
    seq, mac = parse_checkpoint(expected)
    top = chained_top(session)
    if seq > top:
        return (f"checkpoint {seq} is beyond the chained history (which ends at {top}): "
                "chained events were deleted")
    found = checkpoint(session, keys, as_of=seq)
    if found is None:
        return f"the chained event at {seq} is gone: deleted or unchained"
    if not hmac.compare_digest(found.mac[:len(mac)], mac):
        return f"the history up to {seq} differs from the checkpoint: rewritten or cut"
    return ""


@dataclass
class Verdict:
    """What `verify` found in one chain."""

    chained: int = 0
    pending: int = 0
    first_bad: uuid.UUID | None = None
    problem: str = ""
    head: str = ""
    refused: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Say whether the chained part is intact and nothing waits where it cannot belong."""
        return self.first_bad is None and not self.refused


def verify(
    session: Session, keys: KeyService, chain_id: uuid.UUID | None,
    windows: ChainWindows | None = None,
) -> Verdict:
    """Check a chain read-only: edits, deletions, reordering, and late or back-dated events."""
    chain_id, w = chain_key(chain_id), windows or ChainWindows()
    verdict = Verdict()
    macs: dict[int, bytes] = {}
    expected_seq, prev, last_seq, head_at = 1, "", 0, None
    for event in session.execute(
        select(EVENTS)
        .where(AuditEvent.chain_id == chain_id, AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq)
    ).mappings():
        version = event["mac_key_version"] or 0
        if version not in macs:
            macs[version] = keys.audit_key(session, version)[1]
        problem = ""
        if event["chain_seq"] != expected_seq:
            problem = f"sequence jumps from {expected_seq - 1} to {event['chain_seq']} (deleted)"
        elif event["prev_mac"] != prev:
            problem = "does not follow the previous event (deleted or reordered)"
        elif not hmac.compare_digest(event["mac"] or "", compute_mac(macs[version], prev, event)):
            problem = "content does not match its MAC (edited or reordered)"
        elif event["seq"] <= last_seq:
            problem = "chained out of insertion order (seq edited)"
        if problem:
            verdict.first_bad, verdict.problem = event["id"], problem
            break
        verdict.chained += 1
        expected_seq, prev = expected_seq + 1, event["mac"] or ""
        last_seq, head_at = event["seq"], event["at"]
    verdict.head = prev
    waiting = [AuditEvent.chain_id == chain_id, AuditEvent.chain_seq.is_(None)]
    verdict.pending = int(
        session.scalar(select(func.count()).select_from(AuditEvent).where(*waiting)) or 0
    )
    _, late = late_events(session, chained_top(session), chain_id)
    verdict.refused = [(event_id, "waits below the chained history") for event_id in late]
    if head_at is not None:
        verdict.refused += [(event_id, "dated before its chain's head") for event_id in
                            session.scalars(
                                select(AuditEvent.id)
                                .where(*waiting, AuditEvent.at < head_at - w.audit_tolerance)
                                .order_by(AuditEvent.seq).limit(NAMED)
                            ) if event_id not in late]
    return verdict
