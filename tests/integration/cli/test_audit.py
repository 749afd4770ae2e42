"""`broker client …` and `broker audit verify`: the chain catches edits, deletions, reorders."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import ScriptInfo
from sqlalchemy import delete, select, update

from broker import worker
from broker.cli import cli
from broker.db import get_db
from broker.models import AuditEvent
from tests.factories import make_tenant
from tests.plugins.world import READONLY, World

NO_LAG = worker.Windows(audit_lag=dt.timedelta(0))


def invoke(app: Flask, *args: str) -> Result:
    """Run a `broker` command against this app."""
    return CliRunner().invoke(cli, list(args), obj=ScriptInfo(create_app=lambda: app))


def test_client_create_rotate_disable_list(
    api_app: Flask, make_world: Callable[..., World]
) -> None:
    world = make_world()
    created = invoke(
        api_app, "client", "create", "--tenant", world.tenant.slug, "--name", "nightly",
        "--scope", "gmail.readonly", "--ip-range", "10.0.0.0/8", "--json",
    )
    assert created.exit_code == 0, created.output
    issued = json.loads(created.output)
    assert issued["client_id"].startswith("cl_") and len(issued["client_secret"]) >= 43
    world.client_id, world.client_secret = issued["client_id"], issued["client_secret"]
    assert world.token(ip="10.0.0.1").status_code == 200
    listed = invoke(api_app, "client", "list", "--tenant", world.tenant.slug, "--json")
    rows = json.loads(listed.output)
    assert {r["client_id"] for r in rows} >= {issued["client_id"]}
    assert issued["client_secret"] not in listed.output
    assert rows[0]["scopes"] == [READONLY]
    rotated = invoke(api_app, "client", "rotate-secret", issued["client_id"], "--json")
    assert rotated.exit_code == 0
    assert invoke(api_app, "client", "disable", issued["client_id"]).exit_code == 0
    bad = invoke(api_app, "client", "create", "--tenant", world.tenant.slug, "--name", "x",
                 "--scope", "gmail.readonly", "--ip-range", "nonsense")
    assert bad.exit_code != 0 and "not an IP range" in bad.output


@pytest.fixture
def chained(world: World) -> World:
    """A world whose audit events (a few hand-outs and refusals) are chained."""
    for body in ({"user": world.user.email}, {"user": "nobody@x.test"}, {"user": world.user.email}):
        world.token(body)
    assert worker.chain_audit(world.app, NO_LAG) >= 4
    return world


def verify(world: World) -> tuple[int, str]:
    """Run `broker audit verify --tenant` and return its exit code and output."""
    result = invoke(world.app, "audit", "verify", "--tenant", world.tenant.slug)
    return result.exit_code, result.output


def events(world: World) -> list[AuditEvent]:
    """Return the tenant's chained events in chain order."""
    with get_db(world.app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == world.tenant.id,
                                     AuditEvent.chain_seq.is_not(None))
            .order_by(AuditEvent.chain_seq)
        ))


def test_intact_chain_verifies(chained: World) -> None:
    code, output = verify(chained)
    assert code == 0 and " ok, " in output and "0 pending" in output


def test_edit_is_caught(chained: World) -> None:
    target = events(chained)[2]
    with get_db(chained.app).transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == target.id)
                        .values(ip="192.0.2.66"))
    code, output = verify(chained)
    assert code == 1 and str(target.id) in output and "edited" in output


def test_deletion_is_caught(chained: World) -> None:
    rows = events(chained)
    with get_db(chained.app).transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == rows[1].id))
    code, output = verify(chained)
    assert code == 1 and str(rows[2].id) in output


def test_reorder_is_caught(chained: World) -> None:
    a, b = events(chained)[1:3]
    with get_db(chained.app).transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == a.id).values(chain_seq=-1))
        session.execute(
            update(AuditEvent).where(AuditEvent.id == b.id).values(chain_seq=a.chain_seq)
        )
        session.execute(
            update(AuditEvent).where(AuditEvent.id == a.id).values(chain_seq=b.chain_seq)
        )
    code, output = verify(chained)
    assert code == 1 and (str(a.id) in output or str(b.id) in output)


def test_chain_continues_across_passes_and_tenants(chained: World, api_app: Flask) -> None:
    make_tenant(api_app)  # a tenant.create event for another chain
    chained.token()
    assert worker.chain_audit(chained.app, NO_LAG) >= 2
    code, _ = verify(chained)
    assert code == 0
    result = invoke(chained.app, "audit", "verify")
    assert result.exit_code == 0, result.output
