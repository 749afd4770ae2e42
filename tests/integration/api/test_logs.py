"""No issued token, refresh token or secret reaches any log line, every logger at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Flask

from broker import webhooks, worker
from broker.db import get_db
from broker.keys import get_keys
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
