"""The admin's landing page: the tenant at a glance, drawn without script, readable as tables."""

from __future__ import annotations

import datetime as dt
import re

from flask import Flask

from broker import audit, worker
from broker.clock import utcnow
from broker.db import get_db
from broker.models import AuditHourly, Connection, SecurityEvent, SecurityEventTenant
from tests.factories import make_connection, make_user
from tests.integration.web.admin.conftest import READONLY, Browser, Org


def _at(app: Flask, when: dt.datetime, action: str, outcome: str = "ok",
        reason: str | None = None, tenant: Org | None = None, **details: object) -> None:
    assert tenant is not None
    with get_db(app).transaction() as session:
        audit.record(session, now=when, action=action, tenant_id=tenant.tenant.id,
                     actor_type="client", actor_id="job", outcome=outcome, reason=reason,
                     details=details)


def _table(body: str, caption: str) -> str:
    found = re.search(r"<caption[^>]*>" + re.escape(caption), body)
    assert found, caption
    return body[found.start(): body.index("</table>", found.start())]


def _rows(table: str) -> dict[str, list[str]]:
    out = {}
    body = table[table.index("<tbody>"):]
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        found = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in found]
        if cells and cells[0]:
            out[cells[0]] = cells[1:]
    return out


def test_admin_lands_on_the_overview(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    answer = as_admin.get("/admin")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/overview")
    body = as_admin.get("/admin/overview").get_data(as_text=True)
    assert 'aria-current="page">Overview</a>' in body
    assert "<script" not in body and "style=" not in body  # the CSP stays strict
    assert "Nothing in this period yet." in body
    assert "No connection needs re-consent." in body


def test_members_and_other_tenants_see_nothing(
    admin_app: Flask, org: Org, other: Org, make_browser: object
) -> None:
    assert callable(make_browser)
    assert make_browser(org.member).get("/admin/overview").status_code == 403
    _at(admin_app, utcnow(), "token.handout", tenant=other)
    body = make_browser(org.admin).get("/admin/overview").get_data(as_text=True)
    assert "Nothing in this period yet." in body  # globex's hand-out is not acme's


def test_overview_counts_handouts_refreshes_and_connections(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    for i, status in enumerate(("active", "active", "degraded", "needs_reauth")):
        user = make_user(admin_app, org.tenant, f"u{i}@acme.test")
        conn = make_connection(admin_app, user, scopes=[READONLY], status=status)
        if status == "needs_reauth":
            with get_db(admin_app).transaction() as session:
                session.get(Connection, conn.id).status_reason = "revoked_or_expired"
    hour = audit.hour_of(utcnow())
    # Older hours as the worker folded them, the newest events counted live: the page adds both.
    with get_db(admin_app).transaction() as session:
        for when, outcome, reason, count in (
            (hour - dt.timedelta(days=9), "ok", "", 7),  # too old for either chart
            (hour - dt.timedelta(days=3), "ok", "", 1),  # the week only
            (hour - dt.timedelta(hours=2), "denied", "ip_not_allowed", 1),
        ):
            session.add(AuditHourly(tenant_id=org.tenant.id, hour=when, action="token.handout",
                                    outcome=outcome, reason=reason, count=count,
                                    google_ms_sum=0, google_ms_max=0, google_calls=0))
    _at(admin_app, hour, "token.refresh", tenant=org, google_ms=100)
    _at(admin_app, hour, "token.refresh", tenant=org, google_ms=300)
    _at(admin_app, hour, "token.refresh", "error", "transient", tenant=org, google_ms=900)
    for _ in range(3):
        _at(admin_app, hour + dt.timedelta(minutes=1), "token.handout", tenant=org)
    this_hour, two_ago = (f"{h:%a %d %b %H}:00" for h in (hour, hour - dt.timedelta(hours=2)))
    three_ago = f"{hour - dt.timedelta(days=3):%a %d %b}"

    body = as_admin.get("/admin/overview").get_data(as_text=True)
    tiles = dict(re.findall(r'data-status="(\w+)"><a [^>]+><span class="tile-count">(\d+)', body))
    assert tiles == {"needs_reauth": "1", "degraded": "1", "active": "2", "revoked": "0"}
    assert "u3@acme.test" in _table(body, 'Waiting for the user to connect Gmail again')
    assert "revoked at Google or expired" in body  # the reason in words

    day = _rows(_table(body, "Hand-outs and refusals per hour, last 24 hours (UTC)"))
    assert len(day) == 24
    assert day[this_hour] == ["3", "0"] and day[two_ago] == ["0", "1"]
    week = _rows(_table(body, "Hand-outs and refusals per hour, last 7 days (UTC)"))
    assert len(week) in (7, 8)  # 168 hours span eight dates unless they start at midnight
    assert week[three_ago] == ["1", "0"]
    assert sum(int(v[0]) for v in week.values()) == 4  # the nine-day-old ones are left out
    assert sum(int(v[1]) for v in week.values()) == 1

    latency = _rows(_table(body, "Average time Google took to refresh a token, per hour "
                                 "(last 24 hours, UTC)"))
    assert latency[f"{hour:%H}:00"] == ["433", "900", "3"]
    outcomes = _table(body, "Last 24 hours")
    assert re.search(r"refresh</td><td>refreshed</td><td>2<", outcomes)
    assert re.search(r"refresh</td><td>failed: transient</td><td>1<", outcomes)
    assert re.search(r"refusal</td><td>ip_not_allowed</td><td>1<", outcomes)
    # The 24-hour chart has a served bar for noon, drawn as SVG rectangles.
    assert body.count('class="series-served"') >= 2 and 'class="series-refused"' in body


def test_overview_names_the_worker_keys_and_clients(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    as_admin.post("/admin/clients", {"name": "nightly", "scopes": READONLY})
    body = as_admin.get("/admin/overview").get_data(as_text=True)
    assert 'id="worker-late"' in body and "never ran" in body
    assert re.search(r'id="key-age">\s*version 1, 0 days old', body)
    assert "nightly" in body and "never" in _table_after(body, 'id="clients"')
    assert re.search(r'id="audit-waiting">[1-9]', body)  # the client's creation waits
    worker.beat(admin_app, 5)
    worker.chain_audit(admin_app, worker.Windows(audit_lag=dt.timedelta(0)))
    body = as_admin.get("/admin/overview").get_data(as_text=True)
    assert 'id="worker-late"' not in body and "running" in body
    assert re.search(r'id="audit-waiting">0', body)


def _table_after(body: str, marker: str) -> str:
    start = body.index(marker)
    return body[start: body.index("</table>", start)]


def test_overview_counts_googles_security_events_for_this_tenant(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    now = utcnow()
    with get_db(admin_app).transaction() as session:
        for i, (kind, outcome, tenant) in enumerate((
            ("tokens-revoked", "acted", org), ("tokens-revoked", "acted", org),
            ("account-disabled", "acted", org), ("sessions-revoked", "acted", other),
        )):
            event = SecurityEvent(jti=f"j{i}", iss="https://accounts.google.com/", iat=now,
                                  received_at=now, types=[kind], kind=kind, outcome=outcome)
            session.add(event)
            session.flush()
            session.add(SecurityEventTenant(event_id=event.id, tenant_id=tenant.tenant.id))
    body = as_admin.get("/admin/overview").get_data(as_text=True)
    section = body[body.index('id="security-events"'):body.index('id="clients"')]
    assert re.search(r'data-event="tokens-revoked"><td>tokens-revoked</td><td>acted</td><td>2<',
                     section)
    assert 'data-event="account-disabled"' in section
    assert "sessions-revoked" not in section  # another tenant's
    assert "The receiver is off" in section
