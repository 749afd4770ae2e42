"""Anonymous OAuth callbacks: rate-limited per IP, logged not audited (issue 11 item 4)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from broker.db import get_db
from broker.logging import JsonFormatter
from broker.models import AuditEvent, Tenant
from tests.factories import make_tenant
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import READONLY, WebBrowser, events, text
from tests.plugins.emulator import EmulatorControls


def _audit_rows(app: Flask) -> int:
    with get_db(app).transaction(write=False) as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """Return the `callback_refused` log records as the JSON lines the broker writes."""
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records
            if getattr(r, "event", None) == "callback_refused"]


def test_junk_callbacks_are_logged_not_audited_and_limited_per_ip(
    make_google_app: Callable[..., Flask], emulator: EmulatorControls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An hour's window: the test never races the window's end.
    app = make_google_app(CALLBACK_RATE_LIMIT="150/hour")
    make_tenant(app, "acme", domains=("acme.test",), admin="admin@acme.test")
    emulator.add_account("alice@acme.test", hd="acme.test")
    member = WebBrowser(app, remote_addr="198.51.100.7")
    sign_in(member, emulator, "alice@acme.test")
    stranger = WebBrowser(app, remote_addr="198.51.100.7")
    before = _audit_rows(app)
    caplog.set_level(logging.INFO)
    answers = []
    for i in range(200):
        state = f"junkstate{i:03d}canary"
        if i % 4 == 0:
            url = f"/connections/callback?state={state}&code=4/junkcode{i}"
            answers.append(member.get(url))  # signed in, but no such transaction
        elif i % 4 == 1:
            answers.append(stranger.get(f"/connections/callback?state={state}&code=c{i}"))
        elif i % 4 == 2:
            answers.append(stranger.get(f"/auth/callback?state={state}&code=4/junkcode{i}"))
        else:
            answers.append(stranger.get(f"/auth/callback?state={state}&state=again"))
    assert _audit_rows(app) == before
    statuses = [a.status_code for a in answers]
    # The member's own sign-in spent one of the address's 150 callbacks.
    assert statuses[:149].count(429) == 0 and statuses[149:] == [429] * 51
    limited = answers[-1]
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    assert "Too many" in text(limited) and "try again" in text(limited)
    assert limited.mimetype == "text/html"
    refused = _refusals(caplog)
    assert len(refused) == 149
    assert {(line["reason"], line["msg"].split()[0]) for line in refused} == {
        ("bad_state", "connect"), ("signin_required", "connect"), ("bad_state", "signin"),
    }
    assert sum("duplicate_parameter" in line["msg"] for line in refused) == 37
    assert "junkstate" not in caplog.text and "junkcode" not in caplog.text
    # The limit is per address: another network is still answered.
    other = WebBrowser(app, remote_addr="203.0.113.9")
    assert other.get("/auth/callback?state=x").status_code == 400
    assert _audit_rows(app) == before


def test_refused_callback_of_a_known_transaction_is_still_audited(
    signed_in: WebBrowser, emulator: EmulatorControls, acme: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    emulator.settings(auto_consent=True)
    start = signed_in.get(f"/connections/connect?scope={READONLY}").headers["Location"]
    callback = signed_in.get(start).headers["Location"]
    emulator.settings(auto_consent=None)
    assert signed_in.get(callback).status_code == 303
    # Reloading a used callback once connected: a notice on the connection page, still audited.
    replay = signed_in.get(callback)
    assert replay.status_code == 303 and replay.headers["Location"].endswith("/connections")
    refused = events(signed_in.app, "connect.refused")
    assert [(e.reason, e.tenant_id) for e in refused] == [("state_replayed", acme.id)]
    assert refused[0].subject_user_id is not None
    assert _refusals(caplog) == []


def test_callback_limit_is_validated(make_app: Callable[..., Flask]) -> None:
    from broker.config import ConfigError

    with pytest.raises(ConfigError, match="BROKER_CALLBACK_RATE_LIMIT"):
        make_app(CALLBACK_RATE_LIMIT="lots")
