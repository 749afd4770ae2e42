"""The admin overview at a million audit rows: the page's queries against a plain GROUP BY."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench import data
from bench.run import Run
from broker import audit
from broker.db import Database
from broker.tenancy import clients as api_clients
from broker.tenancy import key_rotation, tenants, users

EVENTS = 1_000_000
BACKLOG = 5_000  # events the worker has not folded yet: a few seconds of a busy tenant
WEEK = dt.timedelta(days=7)
ACTIONS = ["token.handout", "token.refresh", "connection.needs_reauth"]
# One tenant's week: hand-outs (a tenth refused), refreshes with Google's latency.
FILL = """
INSERT INTO audit_events (id, tenant_id, chain_id, at, actor_type, actor_id, action,
                          outcome, reason, scopes, details, chain_seq)
SELECT gen_random_uuid(), %(tenant)s, %(tenant)s,
       %(start)s + (i::bigint * %(step)s) * interval '1 microsecond', 'client', 'bench',
       CASE WHEN i %% 20 = 0 THEN 'token.refresh' ELSE 'token.handout' END,
       CASE WHEN i %% 10 = 1 THEN 'denied' ELSE 'ok' END,
       CASE WHEN i %% 10 = 1 THEN 'ip_not_allowed' END,
       '[]'::json, CASE WHEN i %% 20 = 0 THEN json_build_object('google_ms', 50 + i %% 200)
                        ELSE '{}'::json END,
       CASE WHEN %(chained)s THEN i END
FROM generate_series(%(first)s, %(last)s) AS i
"""
PLAIN = """
SELECT date_trunc('hour', at), action, outcome, reason, count(*)
FROM audit_events WHERE tenant_id = %s AND at >= %s AND action = ANY(%s)
GROUP BY 1, 2, 3, 4
"""


def _median_ms(work: Callable[[], object], times: int) -> float:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        work()
        spent.append((time.perf_counter() - start) * 1000)
    return statistics.median(spent)


def overview(run: Run) -> dict[str, Any]:
    """Fill one tenant's week with a million events; time folding and the page's queries."""
    name = run.stack.postgres.create("overview")
    url = run.stack.postgres.url(name)
    tenant = data.prepare(url, run.keys, 1)[0]
    now = dt.datetime.now(dt.UTC)
    start = now - WEEK
    step = int(WEEK / dt.timedelta(microseconds=1) / (EVENTS + BACKLOG))
    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    run.log(f"overview: writing {EVENTS:,} audit events of one tenant's week into {name}")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(FILL, {"tenant": tenant.id, "start": start, "step": step,
                            "chained": True, "first": 1, "last": EVENTS})
        conn.execute("ANALYZE audit_events")
        plain_ms = _median_ms(lambda: conn.execute(
            PLAIN, (tenant.id, start, ACTIONS)).fetchall(), 5)
    database = Database(url)
    try:
        fold_started = time.perf_counter()
        folded = 0
        while True:
            with database.transaction() as session:
                batch = audit.fold(session)
            if not batch:
                break
            folded += batch
        fold_s = time.perf_counter() - fold_started
        with psycopg.connect(libpq, autocommit=True) as conn:  # the worker's few seconds' lag
            conn.execute(FILL, {"tenant": tenant.id, "start": start, "step": step,
                                "chained": False, "first": EVENTS + 1,
                                "last": EVENTS + BACKLOG})
            conn.execute("ANALYZE audit_events")

        def page() -> None:
            with database.transaction(write=False) as session:
                audit.tallies(session, tenant.id, start, ACTIONS)
                users.connection_counts(session, tenant.id)
                users.list_connections(session, tenant.id, "needs_reauth", limit=10)
                audit.waiting(session, tenant.id)
                key_rotation.list_keys(session, tenant.id)
                api_clients.list_clients(session, tenants.tenant_by_id(session, tenant.id))

        page_ms = _median_ms(page, 20)
        with database.transaction(write=False) as session:
            counted = sum(t.count for t in audit.tallies(
                session, tenant.id, start, ACTIONS).buckets.values())
    finally:
        database.dispose()  # the stack drops the database with the run's others
    result = {"events": EVENTS, "backlog": BACKLOG, "folded": folded, "fold_s": fold_s,
              "page_ms": page_ms, "plain_group_by_ms": plain_ms, "counted": counted}
    run.log(f"  overview: fold {folded:,} events in {fold_s:.1f}s; page queries {page_ms:.1f} ms "
            f"(median of 20) vs a plain GROUP BY {plain_ms:.0f} ms (median of 5); "
            f"counted {counted:,} of {EVENTS + BACKLOG:,}")
    return result
