"""A database writer cannot cut, rewrite or back-date audit history past a signed checkpoint.

Each attack is plain SQL on real rows; `broker audit verify --expect <checkpoint taken
before>` must exit 1 naming the problem. Deleting a tenant keeps its chain verifiable.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid

import pytest
from flask import Flask
from sqlalchemy import delete, func, insert, select, update

from broker import worker
from broker.audit import chains
from broker.db import get_db
from broker.keys import get_keys
from broker.models import AuditEvent
from broker.tenancy import tenants
from tests.factories import make_tenant
from tests.integration.cli.test_audit import NO_LAG, invoke
from tests.plugins.world import World


@pytest.fixture
def chained(world: World) -> World:
    """A world whose hand-outs and refusals are chained."""
    for body in ({"user": world.user.email}, {"user": "nobody@x.test"}, {"user": world.user.email}):
        world.token(body)
    assert worker.chain_audit(world.app, NO_LAG) >= 4
    return world


def head(app: Flask) -> str:
    """Return `broker audit head`'s SEQ:MAC."""
    result = invoke(app, "audit", "head")
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert re.fullmatch(r"\d+:[0-9a-f]{64}", line), line
    return line


def verify_expect(app: Flask, checkpoint: str) -> tuple[int, str]:
    """Run `broker audit verify --expect` and return its exit code and output."""
    result = invoke(app, "audit", "verify", "--expect", checkpoint)
    return result.exit_code, result.output


def newest(app: Flask, tenant_id: uuid.UUID, n: int) -> list[AuditEvent]:
    """Return a chain's newest n chained events, newest first."""
    with get_db(app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.chain_id == tenant_id,
                                     AuditEvent.chain_seq.is_not(None))
            .order_by(AuditEvent.chain_seq.desc()).limit(n)
        ))


def test_untampered_history_passes_its_checkpoint(chained: World) -> None:
    checkpoint = head(chained.app)
    code, output = verify_expect(chained.app, checkpoint)
    assert code == 0, output
    assert f"checkpoint {checkpoint.split(':')[0]}: ok" in output
    # The metric's 48 bits, written as 12 hex digits, prove the same.
    seq, mac = checkpoint.split(":")
    assert verify_expect(chained.app, f"{seq}:{mac[:12]}")[0] == 0
    # More history later does not disturb an older checkpoint.
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 1
    assert head(chained.app) != checkpoint
    assert verify_expect(chained.app, checkpoint)[0] == 0


def test_nonsense_checkpoint_is_one_line_and_exit_1(chained: World) -> None:
    code, output = verify_expect(chained.app, "12:not-hex")
    assert code == 1 and "SEQ:MAC" in output and len(output.strip().splitlines()) == 1


def test_cutting_the_newest_events_is_caught(chained: World) -> None:
    checkpoint = head(chained.app)
    cut = newest(chained.app, chained.tenant.id, 2)
    with get_db(chained.app).transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id.in_([e.id for e in cut])))
    assert invoke(chained.app, "audit", "verify").exit_code == 0  # what verify alone sees
    code, output = verify_expect(chained.app, checkpoint)
    assert code == 1 and "beyond the chained history" in output
    # New events chained over the cut do not cover it up.
    chained.token()
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 2
    code, output = verify_expect(chained.app, checkpoint)
    assert code == 1 and ("gone" in output or "differs" in output), output


def test_unchaining_editing_and_rechaining_is_caught(chained: World) -> None:
    checkpoint = head(chained.app)
    last = newest(chained.app, chained.tenant.id, 2)
    with get_db(chained.app).transaction() as session:
        session.execute(
            update(AuditEvent).where(AuditEvent.id.in_([e.id for e in last]))
            .values(chain_seq=None, prev_mac=None, mac=None, mac_key_version=None)
        )
        session.execute(update(AuditEvent).where(AuditEvent.id == last[0].id)
                        .values(ip="192.0.2.66", outcome="denied"))
    assert worker.chain_audit(chained.app, NO_LAG) == 2  # the worker MACs the forgery
    assert invoke(chained.app, "audit", "verify").exit_code == 0  # what verify alone sees
    code, output = verify_expect(chained.app, checkpoint)
    assert code == 1 and "rewritten" in output


@pytest.mark.parametrize("placed", ["back-dated", "below the history"])
def test_a_back_dated_insert_is_refused_alarmed_and_reported(
    chained: World, placed: str, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = head(chained.app)
    top = newest(chained.app, chained.tenant.id, 1)[0]
    forged = uuid.uuid4()
    values = {
        "id": forged, "tenant_id": chained.tenant.id, "chain_id": chained.tenant.id,
        "at": top.at - dt.timedelta(days=1), "actor_type": "client",
        "actor_id": chained.client_id, "action": "token.handout", "outcome": "ok",
        "scopes": [], "details": {},
    }
    if placed == "below the history":  # a writer may also choose the number
        values.update(seq=-1, at=top.at)
    with get_db(chained.app).transaction() as session:
        session.execute(insert(AuditEvent).values(**values))
    code, output = verify_expect(chained.app, checkpoint)
    if placed == "back-dated":  # noticed before the worker even looks
        assert code == 1 and str(forged) in output and "dated before" in output
    caplog.set_level(logging.INFO)
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 1  # later events still chain
    alarms = [r for r in caplog.records if getattr(r, "event", "") == "audit_tamper"]
    assert alarms and alarms[0].levelno == logging.ERROR and str(forged) in alarms[0].getMessage()
    with get_db(chained.app).transaction(write=False) as session:
        assert session.get(AuditEvent, forged).chain_seq is None  # type: ignore[union-attr]
    code, output = verify_expect(chained.app, checkpoint)
    assert code == 1 and str(forged) in output
    assert "below the chained history" in output or "dated before" in output


def test_each_pass_logs_a_checkpoint_and_metrics_show_it(
    chained: World, make_app: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 1
    logged = [r for r in caplog.records if getattr(r, "event", "") == "audit_checkpoint"]
    assert logged and f"{logged[-1].seq}:{logged[-1].mac}" == head(chained.app)  # type: ignore[attr-defined]
    seq, mac = head(chained.app).split(":")
    scraper = make_app(METRICS_TOKEN="m" * 32)  # type: ignore[operator]
    body = scraper.test_client().get(
        "/metrics", headers={"Authorization": "Bearer " + "m" * 32}).get_data(as_text=True)
    found = dict(re.findall(r"^(broker_audit_checkpoint_\w+) (\S+)$", body, re.MULTILINE))
    assert int(float(found["broker_audit_checkpoint_seq"])) == int(seq)
    assert int(float(found["broker_audit_checkpoint_mac48"])) == int(mac[:12], 16)


def test_a_deleted_tenants_chain_still_verifies(chained: World, api_app: Flask) -> None:
    gone = make_tenant(api_app)
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 2
    checkpoint = head(chained.app)
    with get_db(api_app).transaction() as session:
        tenants.delete_tenant(session, get_keys(api_app), tenants.get_tenant(session, gone.slug))
    assert worker.chain_audit(chained.app, NO_LAG) >= 1  # the tenant.delete event
    result = invoke(api_app, "audit", "verify")
    assert result.exit_code == 0, result.output
    assert f"deleted tenant {gone.id}: ok, 1 chained" in result.output
    assert f"{chained.tenant.slug}: ok" in result.output and "system: ok" in result.output
    assert verify_expect(api_app, checkpoint)[0] == 0


def test_a_hand_out_inserts_exactly_one_numbered_audit_row(world: World) -> None:
    def rows() -> list[tuple[int, str]]:
        with get_db(world.app).transaction(write=False) as session:
            return [(seq, action) for seq, action in session.execute(
                select(AuditEvent.seq, AuditEvent.action).order_by(AuditEvent.seq))]

    assert world.token().status_code == 200  # refreshes at Google: a refresh row and a hand-out
    for _ in range(3):  # the fast path: the stored token, one INSERT
        before = rows()
        assert world.token().status_code == 200
        after = rows()
        assert after[:len(before)] == before and len(after) == len(before) + 1
        assert after[-1][1] == "token.handout" and after[-1][0] > before[-1][0]
    with get_db(world.app).transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "token.handout")) == 4


def test_the_checkpoint_of_the_heads_now_equals_one_read_from_the_history(
    chained: World, api_app: Flask
) -> None:
    make_tenant(api_app)
    make_tenant(api_app)
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 1
    chained.token({"user": "nobody@x.test"})  # left unchained: the heads must skip it
    chained.token()
    with get_db(chained.app).transaction(write=False) as session:
        heads = session.scalar(select(func.count(func.distinct(AuditEvent.chain_id)))
                               .where(AuditEvent.chain_seq.is_not(None)))
        waiting = session.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.chain_seq.is_(None)))
        assert heads and heads >= 3 and waiting
        now = chains.checkpoint(session, get_keys(chained.app))  # walks the index
        top = chains.chained_top(session)
        scanned = chains.checkpoint(session, get_keys(chained.app), as_of=top)  # the full scan
    assert now is not None and now == scanned and now.seq == top
