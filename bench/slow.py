"""Slow-path scenarios: a stampede on one stale token, and the worker refreshing due ones."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from bench import data
from bench.cpu import Kept, Meter, Reading, postgres_spent, postmaster
from bench.load import basic
from bench.refresh import tree
from bench.run import Dataset, Run
from bench.stack import GOOGLE_CLIENT_ID, Process, broker_command, child_env

STAMPEDE_REQUESTS = 1_000
STAMPEDE_POOL = 12  # database connections per stampede process (see stampede)
STAMPEDE_PROCESSES = 4
UPSTREAM_LATENCY_MS = 200
WORKER_CONNECTIONS = 10_000
WORKER_PROCESSES = 2
WORKER_TIMEOUT = 600.0
# `broker worker` sleeps this long between passes (default 15 s); each pass claims one batch.
WORKER_INTERVAL = 0.5


def refresh_calls(emulator_url: str) -> int:
    """Return how many refresh_token grants the emulator has answered."""
    calls = httpx.get(emulator_url + "/_emulator/calls", timeout=10).json()
    return int(calls.get("token", {}).get("refresh_token", 0))


def grant(http: httpx.Client, address: str, domain: str,
          scopes: Sequence[str] = tuple(data.SCOPES)) -> str:
    """Create an emulator account and a grant for the broker's client; return the refresh token."""
    http.post("/_emulator/accounts", json={"email": address, "hd": domain}).raise_for_status()
    answer = http.post("/_emulator/grants", json={
        "email": address, "client_id": GOOGLE_CLIENT_ID, "scopes": ["openid", "email", *scopes],
    })
    answer.raise_for_status()
    return str(answer.json()["refresh_token"])


def granted_dataset(run: Run, suffix: str, users: int,
                    scopes: Sequence[str] = tuple(data.SCOPES), **load_args: Any) -> Dataset:
    """Load users whose refresh tokens (for `scopes`) are live at the emulator."""
    emulator = run.emulator()
    name = run.stack.postgres.create(suffix)
    url = run.stack.postgres.url(name)
    keys = run.keys
    tenants = data.prepare(url, keys, 1, prefix=suffix, scopes=scopes)
    run.log(f"  granting {users:,} emulator accounts")
    with httpx.Client(base_url=emulator, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(
            lambda i: grant(http, data.email(tenants, i), tenants[0].domain, scopes),
            range(users)))
    seconds = data.bulk_load(url, keys, data.Load(
        tenants, 0, users, refresh_token=lambda i: tokens[i], granted=scopes, **load_args),
        log=run.log)
    return Dataset(name, url, tenants, users, seconds)


class PeakConnections:
    """Poll pg_stat_activity for a database from a thread and keep the peaks."""

    def __init__(self, run: Run, database: str, every: float = 0.01) -> None:
        self.run, self.database, self.every = run, database, every
        self.peak_all = self.peak_active = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with self.run.stack.postgres.admin() as conn:
            deadline = time.monotonic() + 600
            while not self._stop.is_set() and time.monotonic() < deadline:
                total, active = self.run.stack.postgres.connections(conn, self.database)
                self.peak_all = max(self.peak_all, total)
                self.peak_active = max(self.peak_active, active)
                time.sleep(self.every)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def stampede(run: Run) -> dict[str, Any]:
    """Release 1,000 requests for one stale token on 4 broker processes; Google answers slowly."""
    run.ensure_small()
    if not run.broker_ok:
        return {"available": False, "reason": "the token API does not answer yet"}
    run.log(f"stampede: {STAMPEDE_REQUESTS} requests, {STAMPEDE_PROCESSES} broker processes, "
            f"upstream latency {UPSTREAM_LATENCY_MS} ms")
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    dataset = granted_dataset(run, "stampede", 1, token_expires_at=stale)
    # 1,000 requests at once fill every process's pool: 4 x 20 beside the small broker's 2 x 20
    # passed PostgreSQL's 100 connections here, and the refused ones answered 503. 4 x 12 fit.
    proc = run.broker("stampede", dataset, workers=STAMPEDE_PROCESSES,
                      BROKER_DB_POOL_SIZE=str(STAMPEDE_POOL))
    tenant = dataset.tenants[0]
    emulator = run.emulator()
    httpx.post(emulator + "/_emulator/faults", json={
        "endpoint": "token", "latency_ms": UPSTREAM_LATENCY_MS, "count": -1}, timeout=10)
    before = refresh_calls(emulator)
    parts = urlsplit(proc.url)
    spec = {
        "host": parts.hostname, "port": parts.port, "path": "/api/v1/token",
        "count": STAMPEDE_REQUESTS, "authorization": basic(tenant.client_id, tenant.client_secret),
        "body": {"user": data.email(dataset.tenants, 0), "scopes": ["gmail.readonly"],
                 "min_ttl": 300},
    }
    try:
        with PeakConnections(run, dataset.name) as peaks:
            done = subprocess.run([sys.executable, "-m", "bench.burst"], input=json.dumps(spec),
                                  capture_output=True, text=True, timeout=300, check=False,
                                  env=child_env(os.environ))
    finally:
        httpx.delete(emulator + "/_emulator/faults", timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"burst failed: {done.stderr[-800:]}")
    out: dict[str, Any] = {"available": True, **json.loads(done.stdout)}
    out.update(upstream_calls=refresh_calls(emulator) - before, processes=STAMPEDE_PROCESSES,
               threads=run.options.threads, peak_db_connections=peaks.peak_all,
               peak_db_active=peaks.peak_active, upstream_latency_ms=UPSTREAM_LATENCY_MS)
    run.log(f"  upstream calls {out['upstream_calls']}, p50 {out['p50_ms']:.0f} ms, "
            f"p99 {out['p99_ms']:.0f} ms, statuses {out['statuses']}, peak db connections "
            f"{out['peak_db_connections']} ({out['peak_db_active']} active)")
    run.stack.retire(proc)
    run.brokers.pop("stampede", None)
    return out


def worker_available() -> bool:
    """Say whether this broker has a `broker worker` command."""
    done = subprocess.run([*broker_command(), "worker", "--help"], capture_output=True,
                          timeout=60, check=False)
    return done.returncode == 0


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(data.libpq(url), autocommit=True)


def _stored(conn: psycopg.Connection[Any], since: dt.datetime) -> int:
    """Count the access tokens obtained since an instant."""
    row = conn.execute("SELECT count(*) FROM access_tokens WHERE obtained_at >= %s",
                       (since,)).fetchone()
    return int(row[0]) if row else 0


def _refreshed(url: str, since: dt.datetime) -> int:
    with _connect(url) as conn:
        return _stored(conn, since)


def _refresh_audit(url: str, since: dt.datetime) -> dict[str, float]:
    """Read the refreshes' audit rows: Google's latency as the broker saw it (p50, p90) and
    how many users were refreshed more than once."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (details->>'google_ms')::int),"
            " percentile_cont(0.9) WITHIN GROUP (ORDER BY (details->>'google_ms')::int)"
            " FROM audit_events WHERE action = 'token.refresh' AND at >= %s", (since,)).fetchone()
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT subject_user_id FROM audit_events"
            " WHERE action = 'token.refresh' AND outcome = 'ok' AND at >= %s"
            " GROUP BY subject_user_id HAVING count(*) > 1) AS t", (since,)).fetchone()
    return {"google_p50_ms": float(row[0] or 0) if row else 0.0,
            "google_p90_ms": float(row[1] or 0) if row else 0.0,
            "refreshed_twice": int(twice[0]) if twice else 0}


def _handout_p99(run: Run, seconds: float) -> float:
    """Return the hand-out p99 (ms) at 32 clients on the small data set over `seconds`."""
    from bench.load import run_wrk
    from bench.run import scripts

    small = run.ensure_small()
    result = run_wrk("handout", run.brokers["small"].url, scripts(run, small, "small")["token"],
                     32, seconds)
    return result.p99_ms


def _split_rates(done: int, seconds: float, busy: dict[str, float]) -> dict[str, float]:
    """Return the refresh rate while the hand-out probe ran and while it did not."""
    if not busy.get("seconds"):
        return {}
    inside, span = busy["refreshed"], busy["seconds"]
    rest = seconds - span
    return {"rate_beside_handout": inside / span,
            "rate_alone": (done - inside) / rest if rest > 0 else 0.0}


def _meter(run: Run, database_url: str, emulator: Process) -> Meter:
    """Return a meter of the hand-out's broker, the emulator and PostgreSQL (workers later)."""
    meter = Meter()
    handout = run.brokers.get("small")
    if handout is not None:
        meter.add("handout", Kept(lambda: tree(handout)))
    meter.add("emulator", Kept(lambda: tree(emulator)))
    try:
        root = postmaster(database_url)
    except (RuntimeError, psycopg.Error):  # a server elsewhere: its CPU is not this machine's
        return meter
    meter.add("postgres", lambda: postgres_spent(root))
    return meter


def _cpu_windows(quiet_start: Reading, quiet_end: Reading, readings: dict[str, Reading],
                 refreshed_alone: int) -> dict[str, Any]:
    """Return the cores each group used with the hand-out load alone, beside the workers and
    with the workers alone, and each group's CPU per refresh in that last window."""
    out: dict[str, Any] = {"cores": os.cpu_count() or 1,
                           "handout_alone": quiet_end.cores(quiet_start)}
    started, done = readings["started"], readings["done"]
    began, ended = readings.get("began"), readings.get("ended")
    if began is None:  # no hand-out load ran: the workers were alone
        alone, alone_seconds = done.cores(started), done.at - started.at
    elif ended is None or ended.at > done.at:  # it outlasted the workers: no clean windows
        return out
    else:
        out["beside"] = ended.cores(began)
        before, after = began.cores(started), done.cores(ended)
        first, last = began.at - started.at, done.at - ended.at
        alone_seconds = first + last
        alone = {name: (before.get(name, 0.0) * first + after.get(name, 0.0) * last)
                 / alone_seconds for name in before} if alone_seconds > 0 else {}
    out["workers_alone"] = alone
    if refreshed_alone > 0 and alone_seconds > 0:
        out["ms_per_refresh_alone"] = {
            name: alone[name] * alone_seconds / refreshed_alone * 1000
            for name in ("workers", "emulator", "postgres") if name in alone}
    return out


def worker(run: Run) -> dict[str, Any]:
    """Time 2 `broker worker` processes refreshing every due connection with Google 200 ms
    away; count Google calls; measure the hand-out's p99 before and while they run."""
    if not worker_available():
        return {"available": False, "reason": "`broker worker` does not exist yet"}
    count = 2_000 if run.options.quick else WORKER_CONNECTIONS
    run.log(f"worker: {count:,} due connections, {WORKER_PROCESSES} worker processes, upstream "
            f"latency {UPSTREAM_LATENCY_MS} ms")
    now = dt.datetime.now(dt.UTC)
    dataset = granted_dataset(run, "worker", count, last_used_at=now,
                              token_expires_at=now + dt.timedelta(seconds=90))
    emulator = run.emulator()
    env = run.stack.broker_env(dataset.name, emulator)
    run.ensure_small()
    emulator_proc = next(p for p in run.stack.processes if p.name == "emulator")
    meter = _meter(run, dataset.url, emulator_proc)
    if run.broker_ok:
        _handout_p99(run, 2.0)  # warm-up: pools, caches, prepared statements
    quiet_start = meter.read()
    quiet_p99 = _handout_p99(run, 5.0) if run.broker_ok else 0.0
    quiet_end = meter.read()
    httpx.post(emulator + "/_emulator/faults", json={
        "endpoint": "token", "latency_ms": UPSTREAM_LATENCY_MS, "count": -1}, timeout=10)
    before, started = refresh_calls(emulator), time.monotonic()
    since = dt.datetime.now(dt.UTC)
    argv = [*broker_command(), "worker", "--interval", str(WORKER_INTERVAL)]
    nice = run.options.worker_nice
    if nice:
        argv += ["--nice", str(nice)]
        run.log(f"  `broker worker --nice {nice}`")
    procs = [run.stack.spawn(f"worker-{n}", argv, env, "")
             for n in range(WORKER_PROCESSES)]
    meter.add("workers", Kept(lambda: [p.popen.pid for p in procs]))
    spawned = meter.read()
    # Read when the first refresh is stored (after the workers' start-up, which is no
    # refresh's cost), then at the hand-out load's start and end, and when all are done.
    readings: dict[str, Reading] = {}
    first_stored = 0
    busy: dict[str, float] = {}
    probe: threading.Thread | None = None
    if run.broker_ok:  # the hand-out measured while the workers refresh, from a thread
        def measure() -> None:
            # The refreshes done while the hand-out load runs, to tell its rate from the rest.
            first, began = _refreshed(dataset.url, since), time.monotonic()
            readings["began"] = meter.read()
            busy["p99"] = _handout_p99(run, 8.0 if run.options.quick else 15.0)
            readings["ended"] = meter.read()
            busy["refreshed"] = _refreshed(dataset.url, since) - first
            busy["seconds"] = time.monotonic() - began

        probe = threading.Thread(target=measure, daemon=True)
    done = 0
    # One kept connection: a new one every poll would count as PostgreSQL's CPU per refresh.
    counter = _connect(dataset.url)
    try:
        while time.monotonic() - started < WORKER_TIMEOUT:
            done = _stored(counter, since)
            if done and "started" not in readings:
                readings["started"], first_stored = meter.read(), done
            if (probe is not None and probe.ident is None and "started" in readings
                    and time.monotonic() - started >= 2.0):
                probe.start()
            if done >= count or all(p.popen.poll() is not None for p in procs):
                break
            time.sleep(0.25)
    finally:
        seconds = time.monotonic() - started
        readings["done"] = meter.read()
        counter.close()
        exited = [p.log_tail(3) for p in procs if p.popen.poll() not in (None, 0)]
        for proc in procs:
            run.stack.retire(proc)
        httpx.delete(emulator + "/_emulator/faults", timeout=10)
    if probe is not None and probe.ident is not None:
        probe.join(30)
    # CPU over the whole run, the workers' start-up included (the windows below leave it out).
    used = {group: readings["done"].groups[group] - spawned.groups[group]
            for group in ("workers", "emulator")}
    out: dict[str, Any] = {
        "available": True, "connections": count, "refreshed": done, "seconds": seconds,
        "rate": done / seconds if seconds else 0.0,
        "upstream_calls": refresh_calls(emulator) - before, "processes": WORKER_PROCESSES,
        "interval_s": WORKER_INTERVAL, "complete": done >= count,
        "upstream_latency_ms": UPSTREAM_LATENCY_MS,
        "handout_p99_ms": quiet_p99, "handout_p99_busy_ms": busy.get("p99", 0.0),
        **_split_rates(done, seconds, busy),
        "cpu": _cpu_windows(quiet_start, quiet_end, readings,
                            int(done - first_stored - busy.get("refreshed", 0)))
        # A probe still running may have half its figures written: no windows from them.
        if "started" in readings and not (probe and probe.is_alive()) else {},
        "worker_cpu_ms": used["workers"] / max(done, 1) * 1000,
        "emulator_cpu_ms": used["emulator"] / max(done, 1) * 1000,
        **_refresh_audit(dataset.url, since)}
    if exited and done < count:
        out["error"] = "`broker worker` exited: " + exited[0].strip()
    run.log(f"  refreshed {done:,}/{count:,} in {seconds:.1f}s ({out['rate']:.0f}/s) with "
            f"{out['upstream_calls']:,} upstream calls; hand-out p99 {quiet_p99:.1f} ms quiet, "
            f"{out['handout_p99_busy_ms']:.1f} ms while refreshing; CPU per refresh: workers "
            f"{out['worker_cpu_ms']:.2f} ms, emulator {out['emulator_cpu_ms']:.2f} ms; Google's "
            f"latency as the workers saw it p50 {out['google_p50_ms']:.0f} ms, p90 "
            f"{out['google_p90_ms']:.0f} ms; users refreshed twice {out['refreshed_twice']}")
    return out
