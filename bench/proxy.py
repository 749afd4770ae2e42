"""`python -m bench proxy`: Gmail through the broker against the same calls straight to Gmail
(the emulator), in one run: added latency, throughput, CPU per call, calls in flight at once,
the hand-out's tail while the proxy is saturated, and memory."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import data, load
from bench.cpu import spent
from bench.load import MARK, Result, basic
from bench.refresh import tree
from bench.run import Run, measure, scripts, summarise
from bench.slow import granted_dataset
from bench.stack import Process, child_env, memory

READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
USERS = 100  # Gmail's per-user concurrency cap is 10: 500 in flight needs at least 50 users
IN_FLIGHT = 500
SATURATING = 500  # proxy connections kept busy while the hand-out is measured
LATENCY_MS = 500

LUA = """
local requests = {{{requests}}}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  local r = requests[math.random(1, #requests)]
  return wrk.format("GET", r[1], {{["Authorization"] = r[2]}})
end
"""



def _script(path: Path, pairs: list[tuple[str, str]]) -> Path:
    rows = ", ".join(f'{{"{p}", "{a}"}}' for p, a in pairs)
    path.write_text((LUA + load.DONE).format(requests=rows, mark=MARK))
    return path


def _cpu_per_call(procs: list[list[int]], run_load: Any) -> tuple[Result, list[float]]:
    before = [spent(p) for p in procs]
    result = run_load()
    after = [spent(p) for p in procs]
    calls = max(1, result.requests)
    return result, [(a - b) / calls * 1000 for a, b in zip(after, before, strict=True)]


def _burst(url: str, requests: list[dict[str, str]], count: int) -> dict[str, Any]:
    parts = urlsplit(url)
    spec = {"host": parts.hostname, "port": parts.port, "count": count,
            "requests": requests, "path": requests[0]["path"],
            "authorization": requests[0]["authorization"], "timeout": 120}
    done = subprocess.run([sys.executable, "-m", "bench.burst"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=300, check=False,
                          env=child_env(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"burst failed: {done.stderr[-800:]}")
    return dict(json.loads(done.stdout))


def proxy(run: Run) -> dict[str, Any]:
    """Measure the proxy against direct calls, the in-flight figure and the hand-out's tail."""
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # the first call refreshes
    # readonly for the loads (the stored tokens), send for the streamed upload.
    dataset = granted_dataset(run, "proxy", USERS, scopes=(READONLY, SEND),
                              token_expires_at=stale)
    broker = run.broker("proxy", dataset)
    emulator_url = run.emulator()
    emulator_proc = next(p for p in run.stack.processes if p.name == "emulator")
    tenant = dataset.tenants[0]
    auth = basic(tenant.client_id, tenant.client_secret)
    emails = [data.email(dataset.tenants, i) for i in range(USERS)]
    run.log(f"proxy: {USERS} users, gunicorn {run.options.workers} {run.options.worker_class} "
            f"workers x {run.options.threads}")
    with httpx.Client(base_url=broker.url, timeout=60) as http:
        for email in emails:  # the loaded tokens are stale: each user's first call refreshes
            answer = http.get(f"/proxy/gmail/v1/users/{email}/profile",
                              headers={"Authorization": auth})
            if answer.status_code != 200:
                raise RuntimeError(f"proxy warm-up: {answer.status_code} {answer.text[:300]}")
        tokens = [http.post("/api/v1/token", auth=(tenant.client_id, tenant.client_secret),
                            json={"user": e, "scopes": ["gmail.readonly"]}).json()
                  for e in emails]
    folder = run.stack.workdir
    proxied = _script(folder / "proxy.lua", [
        (f"/proxy/gmail/v1/users/{e}/profile", auth) for e in emails])
    direct = _script(folder / "direct.lua", [
        ("/gmail/v1/users/me/profile", "Bearer " + t["access_token"]) for t in tokens])
    broker_pids, emulator_pids = tree(broker), tree(emulator_proc)
    out: dict[str, Any] = {"users": USERS, "worker_class": run.options.worker_class,
                           "workers": run.options.workers, "threads": run.options.threads}
    for _target, url, script in (("direct", emulator_url, direct), ("proxy", broker.url, proxied)):
        load.run_wrk("warmup", url, script, 32, run.options.warmup)
    runs: dict[str, list[Result]] = {}
    cpu: dict[str, list[list[float]]] = {}
    for _ in range(run.options.rounds):
        for clients in (1, 32):
            for target, url, script in (("direct", emulator_url, direct),
                                        ("proxy", broker.url, proxied)):
                proc = Process(target, emulator_proc.popen, emulator_proc.log, url)
                result, per_call = _cpu_per_call(
                    [broker_pids, emulator_pids],
                    lambda p=proc, s=script, c=clients: measure(run, f"{p.name}", p, s, c))
                runs.setdefault(f"{target}@{clients}", []).append(result)
                cpu.setdefault(f"{target}@{clients}", []).append(per_call)
    for key, value in runs.items():
        out[key] = summarise(value)
        rows = cpu[key]
        out[key]["broker_cpu_ms_per_call"] = sorted(r[0] for r in rows)[len(rows) // 2]
        out[key]["emulator_cpu_ms_per_call"] = sorted(r[1] for r in rows)[len(rows) // 2]
    token_script = scripts(run, dataset, "proxy")["token"]
    out["handout@1"] = summarise([measure(run, "handout", broker, token_script, 1)])
    out["added_p50_ms@1"] = out["proxy@1"]["p50_ms"] - out["direct@1"]["p50_ms"]
    out["throughput_ratio@32"] = out["proxy@32"]["rps"] / max(1.0, out["direct@32"]["rps"])
    run.log(f"  added p50 at 1 client {out['added_p50_ms@1']:.2f} ms (a hand-out's p50: "
            f"{out['handout@1']['p50_ms']:.2f} ms); throughput at 32 "
            f"clients {out['throughput_ratio@32']:.2f}x direct; broker CPU per call "
            f"{out['proxy@32']['broker_cpu_ms_per_call']:.2f} ms")
    out["in_flight"] = _in_flight(run, broker, emulator_url, emails, auth)
    out["handout_tail"] = _handout_tail(run, broker, dataset, proxied, emulator_url)
    out["streaming"] = _streaming(run, broker, emulator_url, emails[0], auth)
    out["memory"] = [memory(pid) for pid in broker.children()]
    run.stack.retire(broker)
    run.brokers.pop("proxy", None)
    return out


def _streaming(run: Run, broker: Process, emulator_url: str, user: str,
               auth: str) -> dict[str, Any]:
    """Download a 25 MB attachment and upload a 30 MB message; report the workers' RSS growth."""
    seeded = httpx.post(f"{emulator_url}/_emulator/accounts/{user}/mailbox", json={
        "messages": 2, "attachment_bytes": 25_000_000}, timeout=60).json()
    newest = seeded["messages"][-1]
    before = {pid: memory(pid)["rss_mb"] for pid in broker.children()}
    base = f"{broker.url}/proxy/gmail/v1/users/{user}/messages"
    got = 0
    with httpx.stream("GET", f"{base}/{newest['id']}/attachments/{newest['attachmentId']}",
                      headers={"Authorization": auth}, timeout=120) as answer:
        for chunk in answer.iter_raw():
            got += len(chunk)
    body = b"From: " + user.encode() + b"\r\nTo: " + user.encode() + b"\r\nSubject: big\r\n\r\n"

    def chunks() -> Any:
        yield body
        for _ in range(30):
            yield b"x" * 1_000_000

    sent = httpx.post(f"{broker.url}/proxy/upload/gmail/v1/users/{user}/messages/send",
                      params={"uploadType": "media"}, content=chunks(), timeout=120,
                      headers={"Authorization": auth, "Content-Type": "message/rfc822"})
    after = {pid: memory(pid)["rss_mb"] for pid in broker.children()}
    growth = max((after.get(pid, 0.0) - mb for pid, mb in before.items()), default=0.0)
    run.log(f"  streaming: 25 MB attachment ({got:,} bytes as JSON), 30 MB upload "
            f"({sent.status_code}); largest worker RSS growth {growth:.1f} MB")
    return {"download_bytes": got, "upload_status": sent.status_code,
            "rss_growth_mb": growth, "rss_before_mb": before, "rss_after_mb": after}


def _slow_gmail(emulator_url: str, on: bool) -> None:
    if on:
        httpx.post(emulator_url + "/_emulator/faults", json={
            "endpoint": "gmail", "latency_ms": LATENCY_MS, "count": -1}, timeout=10)
    else:
        httpx.delete(emulator_url + "/_emulator/faults", timeout=10)


def _in_flight(run: Run, broker: Process, emulator_url: str, emails: list[str],
               auth: str) -> dict[str, Any]:
    """Release IN_FLIGHT proxied calls at once with Gmail answering in LATENCY_MS."""
    requests = [{"path": f"/proxy/gmail/v1/users/{e}/profile", "authorization": auth}
                for e in emails]
    _slow_gmail(emulator_url, True)
    try:
        burst = _burst(broker.url, requests, IN_FLIGHT)
    finally:
        _slow_gmail(emulator_url, False)
    ok = burst["statuses"].get("200", 0)
    # Little's law: the calls' summed time over the wall time is how many were in flight.
    burst["concurrency"] = burst["count"] * burst["p50_ms"] / max(1.0, burst["wall_ms"])
    burst["errors"] = burst["count"] - ok
    run.log(f"  in flight: {burst['count']} calls at {LATENCY_MS} ms upstream: {ok} ok, wall "
            f"{burst['wall_ms']:.0f} ms, p99 {burst['p99_ms']:.0f} ms, statuses "
            f"{burst['statuses']}")
    return burst


def _handout_tail(run: Run, broker: Process, dataset: Any, proxied: Path,
                  emulator_url: str) -> dict[str, Any]:
    """Hand-out p99 at 32 clients alone, then with SATURATING slow proxied calls running."""
    token = scripts(run, dataset, "proxy")["token"]
    seconds = run.options.duration
    alone = measure(run, "handout alone", broker, token, 32, seconds)
    _slow_gmail(emulator_url, True)
    wrk = subprocess.Popen(
        [load.ensure_wrk(), "-t2", f"-c{SATURATING}", f"-d{round(seconds) + 4}s",
         "--timeout", "10s", "-s", str(proxied), broker.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # the proxy's connections are all busy before the hand-outs start
        busy = measure(run, "handout + proxy", broker, token, 32, seconds)
        proxy_out, _ = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
        _slow_gmail(emulator_url, False)
    line = next((x for x in proxy_out.splitlines() if x.startswith(MARK)), "")
    background = json.loads(line[len(MARK):]) if line else {}
    ratio = busy.p99_ms / max(0.001, alone.p99_ms)
    run.log(f"  hand-out p99 alone {alone.p99_ms:.1f} ms, with the proxy saturated "
            f"{busy.p99_ms:.1f} ms ({ratio:.2f}x); proxy meanwhile {background}")
    return {"alone": summarise([alone]), "with_proxy": summarise([busy]), "p99_ratio": ratio,
            "proxy_background": background}
