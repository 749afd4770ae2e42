"""An audited invalid_request says why, without the caller's own input (issue 12, item 16)."""

from __future__ import annotations

from sqlalchemy import select

from broker.db import get_db
from broker.models import AuditEvent
from tests.plugins.world import World


def _refusals(world: World) -> list[AuditEvent]:
    with get_db(world.app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == world.tenant.id,
                                     AuditEvent.reason == "invalid_request")
            .order_by(AuditEvent.seq)
        ))


def test_the_problem_is_recorded_but_never_what_the_caller_sent(world: World) -> None:
    pasted = "ya29.a0-pasted-by-mistake-into-scopes"
    assert world.token({"user": world.user.email, "scopes": [pasted]}).status_code == 400
    assert world.token({"user": world.user.email, "scopes": []}).status_code == 400
    problems = [event.details.get("problem") for event in _refusals(world)]
    assert problems == ["unknown scope", "scopes must be a list of 1-20 scope names"]
    assert all(pasted not in str(event.details) for event in _refusals(world))
