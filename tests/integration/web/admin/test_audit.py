"""The audit log page: tenant only, newest first, filters, pages, CSV formula escaping."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re

from flask import Flask
from sqlalchemy import select

from broker import audit, worker
from broker.audit.queries import escape_cell
from broker.clock import utcnow
from broker.db import get_db
from broker.keys.extension import get_keys
from broker.models import AuditEvent
from tests.integration.web.admin.conftest import READONLY, SEND, Browser, Org

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def add(app: Flask, org: Org, n: int, start: dt.datetime = T0, **fields: object) -> None:
    with get_db(app).transaction() as session:
        for i in range(n):
            event = audit.record(
                session, tenant_id=org.tenant.id, **{
                    "action": "token.handout", "actor_type": "client", "actor_id": "cl_a",
                    **fields,
                },  # type: ignore[arg-type]
            )
            event.at = start + dt.timedelta(minutes=i)


def rows(answer_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(answer_text)))


def test_newest_first_paginated_and_tenant_only(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    add(admin_app, org, 60)
    add(admin_app, other, 3, action="theirs.secret")
    first = as_admin.get("/admin/audit?action=token.handout").get_data(as_text=True)
    assert first.count('data-action="token.handout"') == 50
    assert first.index("2026-03-01 12:59:00Z") < first.index("2026-03-01 12:58:00Z")
    assert 'id="older"' in first and "theirs.secret" not in first
    assert 'id="newer"' not in first
    second = as_admin.get(link(first, "older")).get_data(as_text=True)
    assert second.count('data-action="token.handout"') == 10
    assert 'id="newer"' in second and 'id="older"' not in second
    assert "2026-03-01 12:09:00Z" in second and "2026-03-01 12:10:00Z" not in second
    back = as_admin.get(link(second, "newer")).get_data(as_text=True)
    assert back.count('data-action="token.handout"') == 50 and "2026-03-01 12:59:00Z" in back


def link(body: str, name: str) -> str:
    match = re.search(rf'id="{name}" href="([^"]+)"', body)
    assert match, f"no {name} link"
    return html.unescape(match.group(1))


def test_pages_are_keyset_not_offset(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    add(admin_app, org, 55)
    first = as_admin.get("/admin/audit?action=token.handout").get_data(as_text=True)
    older = link(first, "older")
    assert "before=" in older and "page=" not in older and "action=token.handout" in older
    # Events arriving after the first page was read neither shift nor repeat the next page.
    add(admin_app, org, 5, T0 + dt.timedelta(hours=2))
    second = as_admin.get(older).get_data(as_text=True)
    times = re.findall(r"<time[^>]*>([^<]+)</time>", second)
    assert times == [f"2026-03-01 12:0{i}:00Z" for i in range(4, -1, -1)]
    assert as_admin.get("/admin/audit?before=2026-03-01").status_code == 400
    assert as_admin.get("/admin/audit?after=x-y").status_code == 400


def test_events_read_like_a_log(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    add(admin_app, org, 1, outcome="denied", reason="invalid_request",
        scopes=[READONLY], details={"description": "scopes: unknown scope 'gmail.fly'",
                                    "requested": [READONLY, SEND]})
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    row = body[body.index('data-outcome="denied"'):]
    row = row[: row.index("</tr>")]
    assert "2026-03-01 12:00:00Z" in row  # one line: date, time and zone
    summary = re.sub(r"<[^>]+>", "", row[row.index("<summary>"): row.index("</summary>")])
    # The reason comes first, scopes by their short names, lists as short values.
    assert summary.startswith("description: scopes: unknown scope &#39;gmail.fly&#39;")
    assert "scopes: gmail.readonly" in summary
    assert "requested: gmail.readonly, gmail.send" in summary
    assert "https://www.googleapis.com" not in summary
    assert "<details>" in row and "<pre class=\"json\">" in row  # everything, on demand
    assert "https://www.googleapis.com/auth/gmail.send" in row[row.index("<pre"):]


def test_filters(admin_app: Flask, org: Org, as_admin: Browser) -> None:
    add(admin_app, org, 2, outcome="denied", reason="ip_not_allowed", actor_id="cl_b")
    add(admin_app, org, 3, subject_user_id=org.member.id)
    def count(query: str) -> int:
        body = as_admin.get("/admin/audit?" + query).get_data(as_text=True)
        return body.count('data-action="token.handout"')
    assert count("outcome=denied") == 2
    assert count("client=cl_b") == 2
    assert count("user=mia@acme.test") == 3
    assert count(f"user={org.member.id}") == 3
    assert count("user=nobody@acme.test") == 0
    assert count("action=token.*") == 5
    assert count("since=2026-03-01T12:01&until=2026-03-01T12:02") == 2
    assert count("until=2026-03-01") == 5  # a bare end date includes that day
    assert count("since=2026-03-02") == 0
    assert as_admin.get("/admin/audit?since=yesterday").status_code == 400
    assert as_admin.get("/admin/audit?outcome=maybe").status_code == 400


def test_csv_export_escapes_formulas_and_follows_the_filter(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    add(admin_app, org, 1, reason="=HYPERLINK(\"http://evil\")", details={"note": "+1"})
    add(admin_app, org, 1, T0 + dt.timedelta(hours=1), action="user.invite",
        actor_type="admin", actor_id="@admin",
        details={"email": "-x@acme.test"})
    add(admin_app, other, 1, action="theirs")
    answer = as_admin.get("/admin/audit/export.csv")
    assert answer.status_code == 200
    assert answer.mimetype == "text/csv" and "charset=utf-8" in answer.content_type
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    exported = [r for r in rows(answer.get_data(as_text=True)) if r["action"] != "tenant.create"]
    assert [r["action"] for r in exported] == ["user.invite", "token.handout"]
    handout = exported[1]
    assert handout["reason"].startswith("'=")
    assert exported[0]["actor_id"] == "'@admin"
    only = rows(as_admin.get("/admin/audit/export.csv?action=user.invite").get_data(as_text=True))
    assert [r["action"] for r in only] == ["user.invite"]


def test_escape_cell() -> None:
    for dangerous in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert escape_cell(dangerous) == "'" + dangerous
    assert escape_cell("plain") == "plain" and escape_cell(None) == ""


def test_the_chain_is_verified_and_tampering_shown(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    # Chaining follows insertion order: the events come after the org's own, in time too.
    start = utcnow() + dt.timedelta(hours=1)
    add(admin_app, org, 3, start=start)
    with get_db(admin_app).transaction() as session:
        audit.chain(session, get_keys(admin_app), older_than=start + dt.timedelta(minutes=2))
        chained = len(session.scalars(select(AuditEvent.id).where(
            AuditEvent.chain_id == org.tenant.id, AuditEvent.chain_seq.is_not(None))).all())
    worker.beat(admin_app, 15)  # a running worker: waiting events are not a warning
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    assert "Chain verified" in body
    assert f"{chained} events chained (head {chained})" in body
    assert "waiting to be chained" in body
    with get_db(admin_app).transaction() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.chain_id == org.tenant.id, AuditEvent.chain_seq == 1)).one()
        event.reason = "edited"
    body = as_admin.get("/admin/audit").get_data(as_text=True)
    assert "Chain verification FAILED" in body and "edited or reordered" in body


def test_actors_and_subjects_are_shown_by_email(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    as_admin.post(f"/admin/users/{org.member.id}/end-sessions")
    body = as_admin.get("/admin/audit?action=user.end_sessions").get_data(as_text=True)
    assert "admin boss@acme.test" in body and "mia@acme.test" in body
