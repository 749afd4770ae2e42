"""Refresh scenario: 1,000 distinct expired connections at 32 clients, Google 100 ms away.

Reports the wall time against the bound set by latency and concurrency (N x latency /
clients), and the CPU each side spent per refresh, read from /proc per process: the broker's
gunicorn processes and the emulator's, apart. `python -m bench.refresh` is the load driver
(its own process, so its CPU is neither side's): a JSON spec on stdin, a summary on stdout.
"""

from __future__ import annotations

import asyncio
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import data
from bench.burst import percentile
from bench.cpu import spent
from bench.load import basic
from bench.run import Run
from bench.stack import Process, child_env

REFRESHES = 1_000
CLIENTS = 32
LATENCY_MS = 100
WARM = 2 * CLIENTS  # connections refreshed first, outside the count: pools, discovery, caches
PROFILED = 300  # refreshed in this process under cProfile, after the timed run
CPU_TARGET_MS = 4.0
WALL_TARGET = 1.5


def tree(proc: Process) -> list[int]:
    """Return a process and its children (gunicorn's arbiter and workers)."""
    return [proc.popen.pid, *proc.children()]


def _request(spec: dict[str, Any], user: str) -> bytes:
    body = json.dumps({"user": user, "scopes": ["gmail.readonly"], "min_ttl": 300}).encode()
    return (f"POST /api/v1/token HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
            f"Authorization: {spec['authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _client(spec: dict[str, Any], users: asyncio.Queue[str],
                  out: list[tuple[int, float]]) -> None:
    """Send one user after another over one kept-alive connection, as a job pool would."""
    reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
    try:
        while not users.empty():
            payload = _request(spec, users.get_nowait())
            began = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            out.append((int(head.split(b" ", 2)[1]), time.perf_counter() - began))
    finally:
        writer.close()


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Fetch a token for every user with `clients` connections; summarise the answers."""
    users: asyncio.Queue[str] = asyncio.Queue()
    for user in spec["users"]:
        users.put_nowait(user)
    out: list[tuple[int, float]] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(spec, users, out) for _ in range(spec["clients"])))
    wall = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for status, _ in out:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = [seconds * 1000 for _, seconds in out]
    return {"wall_s": wall, "statuses": statuses, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99)}


def _drive(run: Run, url: str, tenant: data.TenantInfo, users: list[str]) -> dict[str, Any]:
    parts = urlsplit(url)
    spec = {"host": parts.hostname, "port": parts.port, "clients": CLIENTS, "users": users,
            "authorization": basic(tenant.client_id, tenant.client_secret)}
    done = subprocess.run([sys.executable, "-m", "bench.refresh"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=600, check=False,
                          env=child_env(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"refresh driver failed: {done.stderr[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def refresh(run: Run) -> dict[str, Any]:
    """Refresh N distinct expired connections through the token API; time it and cost it."""
    from bench.slow import granted_dataset, refresh_calls

    count = REFRESHES
    run.log(f"refresh: {count:,} distinct expired connections, {CLIENTS} clients, upstream "
            f"latency {LATENCY_MS} ms")
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    dataset = granted_dataset(run, "refresh", count + WARM + PROFILED, token_expires_at=stale)
    proc = run.broker("refresh", dataset)
    emulator_url = run.emulator()
    emulator = next(p for p in run.stack.processes if p.name == "emulator")
    tenant = dataset.tenants[0]
    users = [data.email(dataset.tenants, i) for i in range(count + WARM + PROFILED)]
    httpx.post(emulator_url + "/_emulator/faults", json={
        "endpoint": "token", "latency_ms": LATENCY_MS, "count": -1}, timeout=10)
    try:
        _drive(run, proc.url, tenant, users[:WARM])
        calls, broker_cpu, emulator_cpu = (refresh_calls(emulator_url), spent(tree(proc)),
                                           spent(tree(emulator)))
        answers = _drive(run, proc.url, tenant, users[WARM:WARM + count])
        broker_cpu = spent(tree(proc)) - broker_cpu
        emulator_cpu = spent(tree(emulator)) - emulator_cpu
        calls = refresh_calls(emulator_url) - calls
    finally:
        httpx.delete(emulator_url + "/_emulator/faults", timeout=10)
    bound = count * LATENCY_MS / 1000 / CLIENTS
    out = {"available": True, "count": count, "clients": CLIENTS, "latency_ms": LATENCY_MS,
           **answers, "upstream_calls": calls, "bound_s": bound,
           "wall_ratio": answers["wall_s"] / bound,
           "broker_cpu_ms": broker_cpu / count * 1000,
           "emulator_cpu_ms": emulator_cpu / max(calls, 1) * 1000,
           "workers": run.options.workers, "worker_class": run.options.worker_class}
    run.log(f"  {count:,} refreshes in {answers['wall_s']:.2f}s (bound {bound:.2f}s), "
            f"statuses {answers['statuses']}, upstream calls {calls:,}, broker CPU "
            f"{out['broker_cpu_ms']:.2f} ms/refresh, emulator CPU "
            f"{out['emulator_cpu_ms']:.2f} ms/call")
    run.stack.retire(proc)
    run.brokers.pop("refresh", None)
    out.update(profile_refreshes(run, dataset, users[WARM + count:]))
    return out


def profile_refreshes(run: Run, dataset: Any, users: list[str]) -> dict[str, Any]:
    """Refresh `users` in this process (Flask test client, one thread, no upstream latency):
    the CPU per refresh with no server around it, and where it goes (cProfile, CPU clock)."""
    from bench.report import RESULTS
    from broker import create_app

    env = run.stack.broker_env(dataset.name, run.emulator())
    app = create_app({k: v for k, v in env.items() if k.startswith("BROKER_")})
    client = app.test_client()
    tenant = dataset.tenants[0]
    headers = {"Authorization": basic(tenant.client_id, tenant.client_secret)}

    def one(user: str) -> int:
        return client.post("/api/v1/token", headers=headers, json={
            "user": user, "scopes": ["gmail.readonly"], "min_ttl": 300}).status_code

    warm, measured = users[:20], users[20:]
    for user in warm:
        one(user)
    half = len(measured) // 2
    started = time.process_time()
    statuses = [one(user) for user in measured[:half]]
    cpu_ms = (time.process_time() - started) / half * 1000
    # cProfile on the CPU clock: the waits on PostgreSQL and on the emulator are not the cost.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    statuses += [one(user) for user in measured[half:]]
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "profile-refresh-latest.txt"
    path.write_text(text.getvalue())
    run.log(f"  in-process: {cpu_ms:.2f} ms CPU per refresh (this process only, "
            f"Flask test client), statuses {sorted(set(statuses))}; profile in {path}")
    return {"inprocess_cpu_ms": cpu_ms, "profile": str(path)}


def lines(result: dict[str, Any] | None) -> list[str]:
    """Return the REFRESH section of the report table."""
    if not result:
        return []
    if not result.get("available"):
        return ["REFRESH", f"  not available: {result.get('reason')}"]
    cpu_ok, wall_ok = (result["broker_cpu_ms"] <= CPU_TARGET_MS,
                       result["wall_ratio"] <= WALL_TARGET)
    return [
        f"REFRESH  {result['count']:,} distinct expired connections, {result['clients']} "
        f"clients, upstream {result['latency_ms']} ms, gunicorn {result['workers']} "
        f"{result['worker_class']} workers",
        f"  broker CPU per refresh {result['broker_cpu_ms']:.2f} ms  target <= "
        f"{CPU_TARGET_MS:g}" + ("  ok" if cpu_ok else
                               f"  MISSED by {result['broker_cpu_ms'] - CPU_TARGET_MS:.2f} ms")
        + f"  (emulator CPU per call {result['emulator_cpu_ms']:.2f} ms, apart)",
        f"  wall {result['wall_s']:.2f}s vs bound N x latency / clients "
        f"{result['bound_s']:.2f}s: {result['wall_ratio']:.2f}x  target <= {WALL_TARGET:g}"
        + ("  ok" if wall_ok else f"  MISSED by {result['wall_ratio'] - WALL_TARGET:.2f}x"),
        f"  statuses {result['statuses']}, upstream calls {result['upstream_calls']:,} "
        f"(target {result['count']:,})"
        + ("  ok" if result["upstream_calls"] == result["count"] else "  MISSED")
        + f", p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms",
    ]


def main() -> None:
    """Read the spec from stdin, drive the load, print the summary as JSON."""
    print(json.dumps(asyncio.run(drive(json.loads(sys.stdin.read())))))


if __name__ == "__main__":
    main()
