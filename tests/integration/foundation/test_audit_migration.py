"""Migration 0004 numbers existing audit events in an order that keeps every chain's order."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import insert, select

from broker.db import make_engine
from broker.migrate import upgrade
from broker.models import SYSTEM_CHAIN, AuditEvent, Tenant
from tests.integration.foundation.test_migrations import scratch_url  # noqa: F401 - fixture

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def event(tenant_id: uuid.UUID | None, minute: int, chain_seq: int | None) -> dict[str, Any]:
    """Return an audit row as revision 0002 stored it."""
    return {
        "id": uuid.uuid4(), "tenant_id": tenant_id, "at": T0 + dt.timedelta(minutes=minute),
        "actor_type": "system", "actor_id": None, "action": "test.row", "subject_user_id": None,
        "ip": None, "outcome": "ok", "reason": None, "scopes": [], "request_id": None,
        "details": {}, "chain_seq": chain_seq, "mac_key_version": 1 if chain_seq else None,
        "prev_mac": None, "mac": None,
    }


def test_existing_events_are_numbered_chain_by_chain_then_waiting_by_time(
    scratch_url: str,  # noqa: F811 - the fixture
) -> None:
    engine = make_engine(scratch_url)
    upgrade(engine, "0002")
    tenant = uuid.uuid4()
    # A late commit was chained after a newer event: chain order differs from time order.
    rows = [
        event(tenant, 5, 2), event(tenant, 1, 1), event(tenant, 3, 3),
        event(None, 2, 1), event(tenant, 9, None), event(None, 7, None),
    ]
    with engine.begin() as conn:
        conn.execute(insert(Tenant).values(id=tenant, slug="old", name="Old",
                                           allow_consumer_accounts=False, created_at=T0))
        conn.execute(insert(AuditEvent), rows)
    upgrade(engine)
    with engine.begin() as conn:
        got = {r.id: r for r in conn.execute(select(AuditEvent))}
        assert sorted(r.seq for r in got.values()) == list(range(1, 7))
        for chain in (tenant, SYSTEM_CHAIN):
            chained = sorted((r for r in got.values() if r.chain_id == chain and r.chain_seq),
                             key=lambda r: r.chain_seq)
            assert [r.seq for r in chained] == sorted(r.seq for r in chained)
        waiting = [got[rows[5]["id"]].seq, got[rows[4]["id"]].seq]  # by time: 7 then 9
        assert waiting == [5, 6]
        assert got[rows[3]["id"]].chain_id == SYSTEM_CHAIN and got[rows[0]["id"]].chain_id == tenant
        # New rows are numbered by the database, after the old ones.
        fresh = event(tenant, 11, None) | {"chain_id": tenant}
        conn.execute(insert(AuditEvent), [fresh])
        assert conn.scalar(select(AuditEvent.seq).where(AuditEvent.id == fresh["id"])) == 7
    engine.dispose()
