"""The worker heartbeat: pages promising the worker's work say in amber when it is not running."""

from __future__ import annotations

import pytest
from flask import Flask

from broker import audit, worker
from broker.clock import utcnow
from broker.db import get_db
from tests.conftest import Clock
from tests.integration.web.admin.conftest import Browser, Org

PAGES = ("/admin/audit", "/admin/keys", "/admin/webhooks")


@pytest.fixture
def moved(admin_app: Flask, clock: Clock) -> Clock:
    """The app's clock, starting now (the admin's session is opened at the real time)."""
    clock.now = utcnow()
    admin_app.extensions["broker.clock"] = clock
    return clock


def _waiting_event(app: Flask, org: Org) -> None:
    with get_db(app).transaction() as session:
        audit.record(session, tenant_id=org.tenant.id, action="token.handout",
                     actor_type="client", actor_id="cl_a")


@pytest.mark.parametrize("path", PAGES)
def test_a_broker_whose_worker_never_ran_says_so(
    path: str, moved: Clock, as_admin: Browser
) -> None:
    body = as_admin.get(path).get_data(as_text=True)
    assert 'id="worker-late"' in body
    assert "The worker has not run on this broker yet" in body
    assert "broker worker" in body


def test_the_audit_page_claims_no_verified_chain_while_events_wait(
    admin_app: Flask, org: Org, moved: Clock, as_admin: Browser
) -> None:
    _waiting_event(admin_app, org)
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    assert "Chain verified" not in body
    # The tenant's creation and the hand-out: both recorded, neither chained.
    assert '<span class="warn">Not verified yet: 2 events wait for the worker' in body
    moved.advance(minutes=1)  # past the chain's lag, so the pass chains both events
    worker.run(admin_app, once=True)
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    assert "Chain verified" in body and 'id="worker-late"' not in body
    assert "2 events chained" in body
    # The worker stops: what it chained still verifies, what came later is said to wait.
    moved.advance(minutes=3)
    _waiting_event(admin_app, org)
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    assert "Chain verified" not in body
    assert '<span class="warn">Chained events verify; 1 newer events wait' in body


@pytest.mark.parametrize("path", PAGES)
def test_a_running_worker_is_quiet_and_a_stopped_one_is_named_with_its_time(
    path: str, admin_app: Flask, moved: Clock, as_admin: Browser
) -> None:
    worker.run(admin_app, once=True, interval=15)
    beat_at = moved.now
    assert 'id="worker-late"' not in as_admin.get(path).get_data(as_text=True)
    moved.advance(seconds=119)  # within the two-minute floor: one slow pass is not a stop
    assert 'id="worker-late"' not in as_admin.get(path).get_data(as_text=True)
    moved.advance(seconds=2)
    body = as_admin.get(path).get_data(as_text=True)
    assert "The worker has not run since " + beat_at.strftime("%Y-%m-%d %H:%M:%SZ") in body


def test_lateness_scales_with_the_interval_the_worker_records(
    admin_app: Flask, moved: Clock, as_admin: Browser
) -> None:
    worker.run(admin_app, once=True, interval=300)
    moved.advance(minutes=19)  # four passes of five minutes
    assert 'id="worker-late"' not in as_admin.get("/admin/keys").get_data(as_text=True)
    moved.advance(minutes=2)
    assert 'id="worker-late"' in as_admin.get("/admin/keys").get_data(as_text=True)
