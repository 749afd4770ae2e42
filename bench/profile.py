"""Profile the fast path in-process (pyinstrument when installed, else cProfile)."""

from __future__ import annotations

import cProfile
import datetime as dt
import io
import pstats
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from psycopg.pq import Trace
from sqlalchemy import event

from bench import data
from bench.load import basic
from bench.report import RESULTS
from bench.run import Run
from broker import create_app
from broker.db import get_db

REQUESTS = 3_000


def _requester(run: Run, app: Flask) -> Callable[[], int]:
    small = run.ensure_small()
    client = app.test_client()
    headers = [{"Authorization": basic(t.client_id, t.client_secret)} for t in small.tenants]

    def one() -> int:
        i = random.randrange(small.users)
        answer = client.post("/api/v1/token", headers=headers[i % len(small.tenants)], json={
            "user": data.email(small.tenants, i), "scopes": ["gmail.readonly"], "min_ttl": 300})
        return answer.status_code

    return one


def _count_round_trips(app: Flask, one: Callable[[], int], workdir: Path,
                       requests: int = 200) -> tuple[float, list[str]]:
    """Return database round trips per hand-out and what one hand-out sends, from libpq's trace."""
    engine = get_db(app).engine
    trace = (workdir / "pqtrace.txt").open("w")

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is not None:
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

    engine.dispose()  # new connections, each traced
    event.listen(engine, "connect", on_connect)
    try:
        one()  # connect outside the count
        start = trace.tell()
        for _ in range(requests):
            one()
        middle = trace.tell()
        one()
    finally:
        event.remove(engine, "connect", on_connect)
        engine.dispose()
        trace.close()
    text = (workdir / "pqtrace.txt").read_text(errors="replace")
    counted, last = text[start:middle], text[middle:]
    trips = counted.count("\tReadyForQuery\t") / requests
    sent = []
    for line in last.splitlines():
        kind, _, rest = line.partition("\t")[2].partition("\t")[2].partition("\t")
        if line.startswith("F\t") and kind in ("Query", "Parse", "Bind"):
            words = rest.split()
            sent.append("simple query " + rest.strip()[:60] if kind == "Query" else
                        f"{kind.lower()} {words[1] if kind == 'Bind' else rest.strip()[:60]}")
    return trips, sent


def _top(profiler: cProfile.Profile, count: int = 25) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(count)
    return out.getvalue()


def profile(run: Run) -> dict[str, Any]:
    """Serve REQUESTS hand-outs in this process under a profiler and save the report."""
    small = run.ensure_small()
    if not run.broker_ok:
        return {"available": False, "summary": "not available: the token API does not answer"}
    env = run.stack.broker_env(small.name, run.emulator())
    app = create_app({k: v for k, v in env.items() if k.startswith("BROKER_")})
    one = _requester(run, app)
    for _ in range(200):  # warm pools, caches and prepared statements
        one()
    count = REQUESTS // 3 if run.options.quick else REQUESTS
    trips, sent = _count_round_trips(app, one, run.stack.workdir)
    started = time.perf_counter()
    statuses = [one() for _ in range(count)]
    per_request_ms = (time.perf_counter() - started) / count * 1000
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    try:
        from pyinstrument import Profiler
    except ImportError:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            one()
        profiler.disable()
        text, tool = _top(profiler), "cProfile"
    else:
        sampler = Profiler(interval=0.0002)
        sampler.start()
        for _ in range(count):
            one()
        sampler.stop()
        text = sampler.output_text(unicode=False, color=False, show_all=False)
        (RESULTS / "profile-latest-full.txt").write_text(
            sampler.output_text(unicode=False, color=False, show_all=True))
        tool = "pyinstrument"
    text = (f"Database round trips per hand-out: {trips:.2f}; one hand-out sends:\n"
            + "".join(f"  {line}\n" for line in sent) + "\n" + text)
    path = RESULTS / f"profile-{stamp}.txt"
    path.write_text(text)
    (RESULTS / "profile-latest.txt").write_text(text)
    ok = sum(1 for s in statuses if s == 200)
    summary = ("INVALID (not every hand-out answered 200): " if ok < count else "") + (
               f"{tool}: {count} in-process hand-outs (Flask test client, one thread), "
               f"{per_request_ms:.2f} ms each unprofiled, {ok}/{count} answered 200, "
               f"{trips:.1f} database round trips each; "
               f"report in {path}")
    run.log("  " + summary)
    return {"available": True, "tool": tool, "requests": count,
            "per_request_ms": per_request_ms, "round_trips": trips, "sent": sent,
            "report": str(path), "summary": summary}
