"""Every admin action on both surfaces writes the same audit row (issue 10 item 2).

Each case runs one action through the `broker` CLI and once through the admin page, on a
subject of its own, and compares the audit rows the two runs added: action, outcome, reason,
scopes and details must be identical; only the actor, the address and ids may differ.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import select

from broker.cli import cli
from broker.db import get_db
from broker.keys import FileKeyProvider, get_keys, new_key
from broker.models import ApiClient, AuditEvent, BrowserSession, User, Webhook
from broker.tenancy import clients
from broker.webhooks import add
from broker.workload import trusts
from tests.conftest import Clock
from tests.factories import make_tenant, make_user
from tests.integration.web.admin.conftest import READONLY, Browser, Org

HOOK_URL = "https://hooks.example.com/gmail?token=kept-out-of-the-audit"
ID_KEYS = {"client_id", "webhook_id", "trust_id"}  # fresh ids on each run
ISSUER = "https://token.actions.githubusercontent.com"


def invoke(app: Flask, *args: str) -> Result:
    """Run a `broker` command against this app."""
    result = app.test_cli_runner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


@dataclass
class Case:
    """One admin action: a subject to act on, then the command line and the page request."""

    name: str
    setup: Callable[[Flask, Org, str], dict[str, Any]]
    cli: Callable[[dict[str, Any]], list[str]]
    page: Callable[[Browser, dict[str, Any]], Any]


def _member(status: str = "active", role: str = "member") -> Callable[..., dict[str, Any]]:
    def setup(app: Flask, org: Org, surface: str) -> dict[str, Any]:
        user = make_user(app, org.tenant, f"{surface}@acme.test", status=status, role=role)
        return {"slug": org.tenant.slug, "email": user.email, "id": user.id}
    return setup


def _invitee(app: Flask, org: Org, surface: str) -> dict[str, Any]:
    return {"slug": org.tenant.slug, "email": f"{surface}@acme.test"}


def _client(app: Flask, org: Org, surface: str) -> dict[str, Any]:
    with get_db(app).transaction() as session:
        issued = clients.create_client(session, org.tenant, name=surface, scopes=[READONLY],
                                       actor="setup")
    return {"slug": org.tenant.slug, "id": issued.client_id}


def _webhook(app: Flask, org: Org, surface: str) -> dict[str, Any]:
    with get_db(app).transaction() as session:
        added = add(session, get_keys(app), org.tenant.id, url=HOOK_URL,
                    events=["connection.revoked"], allow_private=False, actor="setup")
    return {"slug": org.tenant.slug, "id": added.webhook.id}


def _trust(app: Flask, org: Org, surface: str) -> dict[str, Any]:
    subject = _client(app, org, surface)
    with get_db(app).transaction() as session:
        row = trusts.add_trust(session, org.tenant, trusts.TrustSpec(
            client_id=subject["id"], issuer=ISSUER, any_subject=True, any_user=True),
            default_audience="https://broker.test", now=dt.datetime.now(dt.UTC), actor="setup")
        return {**subject, "trust_id": str(row.id)}


def _own_tenant(app: Flask, org: Org, surface: str) -> dict[str, Any]:
    # The page rotates its admin's tenant; the CLI a fresh one, so both go from v1 to v2.
    if surface == "page":
        return {"slug": org.tenant.slug}
    return {"slug": make_tenant(app, "twin", domains=("twin.test",)).slug}


CASES = [
    Case("user.invite", _invitee,
         lambda s: ["user", "invite", s["email"], "--tenant", s["slug"], "--admin"],
         lambda b, s: b.post("/admin/users", {"email": s["email"], "role": "admin"})),
    Case("user.suspend", _member(),
         lambda s: ["user", "suspend", s["email"], "--tenant", s["slug"]],
         lambda b, s: b.post(f"/admin/users/{s['id']}/suspend")),
    Case("user.reactivate", _member(status="suspended"),
         lambda s: ["user", "reactivate", s["email"], "--tenant", s["slug"]],
         lambda b, s: b.post(f"/admin/users/{s['id']}/reactivate")),
    Case("user.role", _member(),
         lambda s: ["user", "role", s["email"], "admin", "--tenant", s["slug"]],
         lambda b, s: b.post(f"/admin/users/{s['id']}/role", {"role": "admin"})),
    Case("user.delete", _member(),
         lambda s: ["user", "delete", s["email"], "--tenant", s["slug"], "--yes"],
         lambda b, s: b.post(f"/admin/users/{s['id']}/delete")),
    Case("client.create", _invitee,
         # Names are unique per tenant: each surface names its client after its (masked) email.
         lambda s: ["client", "create", "--tenant", s["slug"], "--name", s["email"], "--scope",
                    "gmail.readonly", "--ip-range", "10.0.0.0/8"],
         lambda b, s: b.post("/admin/clients", {"name": s["email"], "scopes": [READONLY],
                                                "ip_ranges": "10.0.0.0/8"})),
    Case("client.rotate_secret", _client,
         lambda s: ["client", "rotate-secret", s["id"], "--grace", "2h"],
         lambda b, s: b.post(f"/admin/clients/{s['id']}/rotate", {"grace": "2h"})),
    Case("client.disable", _client,
         lambda s: ["client", "disable", s["id"]],
         lambda b, s: b.post(f"/admin/clients/{s['id']}/disable")),
    Case("client.set_methods", _client,
         lambda s: ["client", "set-methods", s["id"], "--method", "gmail.users.messages.list",
                    "--method", "gmail.users.getProfile"],
         lambda b, s: b.post(f"/admin/clients/{s['id']}/methods", {
             "methods": ["gmail.users.messages.list", "gmail.users.getProfile"]})),
    Case("webhook.create", _invitee,
         lambda s: ["webhook", "add", HOOK_URL, "--tenant", s["slug"], "--event",
                    "connection.revoked"],
         lambda b, s: b.post("/admin/webhooks", {"url": HOOK_URL,
                                                 "events": ["connection.revoked"]})),
    Case("webhook.disable", _webhook,
         lambda s: ["webhook", "disable", str(s["id"])],
         lambda b, s: b.post(f"/admin/webhooks/{s['id']}/disable")),
    Case("workload.add", _client,
         lambda s: ["workload", "add", "--tenant", s["slug"], "--client", s["id"], "--issuer",
                    ISSUER, "--any-subject", "--claim", "repository_id=42", "--user",
                    "mia@acme.test", "--max-lifetime", "600"],
         lambda b, s: b.post("/admin/workload", {
             "client_id": s["id"], "issuer": ISSUER, "subject": "*",
             "claims": "repository_id=42", "users": "mia@acme.test", "max_lifetime": "600"})),
    Case("workload.disable", _trust,
         lambda s: ["workload", "disable", s["trust_id"]],
         lambda b, s: b.post(f"/admin/workload/{s['trust_id']}/disable")),
    Case("key.rotate_tenant", _own_tenant,
         lambda s: ["keys", "rotate-tenant", s["slug"], "--no-reseal"],
         lambda b, s: b.post("/admin/keys/rotate")),
]


def _new_events(app: Flask, before: set[uuid.UUID]) -> list[AuditEvent]:
    with get_db(app).transaction(write=False) as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    return [row for row in rows if row.id not in before]


def _event_ids(app: Flask) -> set[uuid.UUID]:
    with get_db(app).transaction(write=False) as session:
        return set(session.scalars(select(AuditEvent.id)))


def _comparable(event: AuditEvent, subject: dict[str, Any]) -> dict[str, Any]:
    """Return what must match across surfaces: the subject's email and fresh ids masked."""
    def mask(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: mask(v, k) for k, v in value.items()}
        if key in ID_KEYS:
            return "<id>"
        if isinstance(value, str) and subject.get("email"):
            return value.replace(subject["email"], "<email>")
        return value
    return {
        "action": event.action, "outcome": event.outcome, "reason": event.reason,
        "scopes": sorted(event.scopes), "details": mask(event.details),
        "actor_type": event.actor_type, "subject": event.subject_user_id is not None,
    }


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_cli_and_page_write_the_same_audit_rows(
    admin_app: Flask, org: Org, as_admin: Browser, case: Case
) -> None:
    runs = {}
    for surface in ("cli", "page"):
        subject = case.setup(admin_app, org, surface)
        before = _event_ids(admin_app)
        if surface == "cli":
            invoke(admin_app, *case.cli(subject))
        else:
            answer = case.page(as_admin, subject)
            assert answer.status_code in (200, 303)
            assert b"refused" not in answer.get_data() and b"Not " not in answer.get_data()
        events = _new_events(admin_app, before)
        runs[surface] = (events, [_comparable(e, subject) for e in events])
    cli_events, cli_rows = runs["cli"]
    page_events, page_rows = runs["page"]
    assert [row["action"] for row in cli_rows] == [case.name]
    assert cli_rows == page_rows
    assert all(e.actor_id and e.actor_id.startswith("cli") and e.ip is None for e in cli_events)
    assert all(e.actor_id == str(org.admin.id) and e.ip == "127.0.0.1" for e in page_events)


def test_the_cli_refuses_a_private_webhook_target_like_the_page(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    result = admin_app.test_cli_runner().invoke(
        cli, ["webhook", "add", "https://10.0.0.5/x", "--tenant", org.tenant.slug]
    )
    assert result.exit_code == 1
    message = "private, loopback and link-local webhook targets are refused"
    assert result.output.strip() == f"Error: {message}"
    answer = as_admin.post("/admin/webhooks", {"url": "https://10.0.0.5/x",
                                               "events": ["connection.revoked"]})
    assert answer.status_code == 400 and message in answer.get_data(as_text=True)
    with get_db(admin_app).transaction(write=False) as session:
        assert session.scalars(select(Webhook)).all() == []


def test_the_cli_subscribes_to_every_event_unless_told(admin_app: Flask, org: Org) -> None:
    invoke(admin_app, "webhook", "add", HOOK_URL, "--tenant", org.tenant.slug)
    with get_db(admin_app).transaction(write=False) as session:
        hook = session.scalars(select(Webhook)).one()
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "webhook.create")
        ).one()
    assert hook.events == [] and event.details["events"] == []
    assert "token=" not in event.details["url"]


def test_the_cli_names_a_bad_webhook_id_in_one_line(admin_app: Flask, org: Org) -> None:
    for wanted, said in (("nonsense", "not a webhook id"), (str(uuid.uuid4()), "no such")):
        result = admin_app.test_cli_runner().invoke(cli, ["webhook", "disable", wanted])
        assert result.exit_code == 1 and said in result.output.lower()
        assert len(result.output.strip().splitlines()) == 1


def test_the_cli_refuses_what_the_page_refuses_for_users(
    admin_app: Flask, org: Org
) -> None:
    # The same last-admin guard answers on both surfaces.
    result = admin_app.test_cli_runner().invoke(
        cli, ["user", "role", org.admin.email, "member", "--tenant", org.tenant.slug]
    )
    assert result.exit_code == 1
    assert "last active admin" in result.output
    with get_db(admin_app).transaction(write=False) as session:
        assert session.get(User, org.admin.id).role == "admin"  # type: ignore[union-attr]


def test_rotate_master_audits_the_primary_ids_and_never_key_material(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    key_file = tmp_path / "master.keys"
    FileKeyProvider(key_file).write({"m-old": old, "m-new": new})
    app = make_app(MASTER_KEYS=None, MASTER_KEYS_FILE=str(key_file))
    make_tenant(app, "acme", domains=("acme.test",))
    result = invoke(app, "keys", "rotate-master", "m-new")
    assert "m-new is primary" in result.output
    with get_db(app).transaction(write=False) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "key.rotate_master")
        ).one()
    assert event.tenant_id is None and event.actor_type == "admin"
    assert event.actor_id is not None and event.actor_id.startswith("cli")
    assert event.details == {"before": "m-old", "after": "m-new", "rewrapped": 1}
    for key in (old, new):
        assert base64.b64encode(key).decode() not in repr(event.details)


def test_cli_actions_take_their_time_from_the_app_clock(
    admin_app: Flask, org: Org, make_browser: Callable[..., Browser], clock: Clock
) -> None:
    admin_app.extensions["broker.clock"] = clock
    make_browser(org.member)  # an open session for the suspension to end
    subject = _client(admin_app, org, "clocked")
    invoke(admin_app, "client", "rotate-secret", subject["id"], "--grace", "2h")
    invoke(admin_app, "user", "suspend", org.member.email, "--tenant", org.tenant.slug)
    with get_db(admin_app).transaction(write=False) as session:
        row = session.get(ApiClient, subject["id"])
        ended = session.scalars(
            select(BrowserSession.ended_at).where(BrowserSession.user_id == org.member.id)
        ).one()
    assert row is not None and row.previous_secret_expires_at == clock.now + dt.timedelta(hours=2)
    assert ended == clock.now


def test_cli_tenant_create_and_delete_name_their_actor(admin_app: Flask) -> None:
    invoke(admin_app, "tenant", "create", "solo", "--name", "Solo", "--admin", "a@solo.test")
    invoke(admin_app, "tenant", "delete", "solo", "--yes")
    with get_db(admin_app).transaction(write=False) as session:
        events = {
            e.action: e for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action.in_(["tenant.create", "tenant.delete"]))
            )
        }
    assert set(events) == {"tenant.create", "tenant.delete"}
    for event in events.values():
        assert event.actor_type == "admin"
        assert event.actor_id is not None and event.actor_id.startswith("cli")
    assert events["tenant.delete"].details["slug"] == "solo"
