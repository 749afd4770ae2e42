"""No issued token, refresh token or secret reaches any log line, every logger at DEBUG."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from broker import webhooks, worker
from broker.db import get_db
from broker.keys import get_keys
from broker.models import AuditEvent
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config


def test_full_flow_at_debug_logs_no_secret(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        # authlib is capped at INFO in production (broker.logging.configure); the emulator is
        # a test double whose server side logs what it issues.
        if not name.startswith(("authlib", "broker.emulator")):
            logging.getLogger(name).setLevel(logging.DEBUG)
    app = make_app(**broker_config(emulator, WEBHOOK_ALLOW_PRIVATE=True))
    world = make_world(app=app)
    secrets = {world.client_secret, world.refresh_token}
    with get_db(app).transaction() as session:
        hook_secret = webhooks.add(
            session, get_keys(app), world.tenant.id, url="http://127.0.0.1:9/x", events=None,
            allow_private=True, actor="test",
        ).secret
    secrets.add(hook_secret)
    first = world.token().json["access_token"]
    second = world.token({"user": world.user.email, "rejected_token": first}).json
    secrets |= {first, second["access_token"]}
    emulator.fault("token", status=503)
    world.token({"user": world.user.email, "rejected_token": second["access_token"],
                 "min_ttl": 3000})
    world.token(headers={"Authorization": "Basic " + "eDp5"})
    emulator.revoke_account(world.user.email)
    world.token({"user": world.user.email, "min_ttl": 3000})
    worker.run_once(app)
    lines = [r.getMessage() + " " + str(r.__dict__) for r in caplog.records]
    assert len(lines) > 10
    for secret in secrets:
        assert secret and not any(secret in line for line in lines)
        assert not any(secret[:24] in line for line in lines)


def _handout_request_ids(world: World) -> list[str | None]:
    with get_db(world.app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent.request_id).where(AuditEvent.tenant_id == world.tenant.id,
                                                AuditEvent.action == "token.handout")
        ))


@pytest.mark.parametrize("given", ["a", "job-42.retry_1", "A" * 64, "0_9"])
def test_a_short_safe_request_id_is_kept(world: World, given: str) -> None:
    response = world.token(headers={"X-Request-Id": given})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == given
    assert _handout_request_ids(world) == [given]


@pytest.mark.parametrize(
    "given",
    # WSGI hands header bytes over as latin-1: these are what a client's raw bytes can become.
    ["", "ÀÉÎÕÜàéîõü", "²³¹²³¹²³¹", "a" * 65, "two words", "x<script>", "a/b", "id\t1",
     "ab:cd", "--%0a--", "a\u00a0b", "Ã©Ã©Ã©Ã©"],
)
def test_any_other_request_id_is_replaced(world: World, given: str) -> None:
    response = world.token(headers={"X-Request-Id": given})
    assert response.status_code == 200
    made = response.headers["X-Request-Id"]
    assert made != given and re.fullmatch(r"[0-9a-f]{24}", made)
    assert _handout_request_ids(world) == [made]
