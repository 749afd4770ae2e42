"""Print the results as a table with ratios and targets, and write them as JSON."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PSS_TARGET_MB = 190  # issue 18 item 5: 0.6x Nango's measured 313 MB
# (name, broker side, floor side, metric, target text, passes)
TARGETS = [
    ("throughput @32 vs same-work floor", "broker@32", "floor@32", "rps", ">= 0.7",
     lambda r: r >= 0.7),
    ("median @1 vs same-work floor", "broker@1", "floor@1", "p50_ms", "<= 3", lambda r: r <= 3),
    ("p99 @32 vs same-work floor", "broker@32", "floor@32", "p99_ms", "<= 1.5",
     lambda r: r <= 1.5),
    ("throughput @32 vs /healthz", "broker@32", "healthz@32", "rps", "", None),
    ("median @1 vs /healthz", "broker@1", "healthz@1", "p50_ms", "", None),
]


def ratios(fast: dict[str, Any]) -> list[dict[str, Any]]:
    """Return broker/floor ratios of the fast path, with their targets."""
    out = []
    for name, num, den, metric, target, check in TARGETS:
        if num in fast and den in fast and fast[den][metric]:
            value = fast[num][metric] / fast[den][metric]
            out.append({"name": name, "ratio": value, "target": target,
                        "met": check(value) if check else None})
    return out


def _mark(met: bool | None) -> str:
    return "" if met is None else ("  ok" if met else "  MISSED")


def table(results: dict[str, Any]) -> str:
    """Return the human-readable table of every scenario present."""
    lines = []
    fast = results.get("fastpath")
    if fast:
        s = fast["settings"]
        rounds = fast.get("healthz@1", {}).get("rounds", 0)
        lines += [f"FAST PATH  N={s['users']:,}  gunicorn {s['workers']}x{s['threads']} "
                  f"{s.get('worker_class', 'gthread')}, "
                  f"{s['duration_s']:.0f}s runs, medians of {rounds}",
                  f"{'target':<10}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
                  f"{'errors':>8}"]
        for key, row in fast.items():
            if isinstance(row, dict) and "rps" in row:
                target, clients = key.split("@")
                lines.append(f"{target:<10}{clients:>8}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}"
                             f"{row['p99_ms']:>10.2f}{row['errors'] + row['non_2xx']:>8}")
        if not fast.get("broker_available"):
            lines.append("broker: not available (the token API does not answer yet)")
        for item in ratios(fast):
            lines.append(f"  broker/{item['name']:<38} {item['ratio']:6.2f}  "
                         f"{('target ' + item['target']) if item['target'] else ''}"
                         f"{_mark(item['met'])}")
    size = results.get("size")
    if size:
        lines.append("SIZE (32 clients)")
        if size.get("available"):
            for key in ("small", "big"):
                row, n = size[key], size[f"{key}_n"]
                lines.append(f"  N={n:<10,} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms"
                             f"  p99 {row['p99_ms']:.2f} ms  errors "
                             f"{row['errors'] + row['non_2xx']}")
            lines.append(f"  ratio N={size['big_n']:,}/N={size['small_n']:,} throughput "
                         f"{size['ratio']:.2f}  target >= 0.9{_mark(size['ratio'] >= 0.9)}"
                         + ("" if size["big_n"] >= 1_000_000 else
                            f"  (--quick: big N is {size['big_n']:,}, not 1,000,000)"))
            lines.append(f"  bulk load of {size['big_n']:,} users: {size['load_seconds']:.0f}s")
        else:
            lines.append(f"  not available: {size.get('reason')}")
    stampede = results.get("stampede")
    if stampede:
        lines.append("STAMPEDE")
        if stampede.get("available"):
            lines.append(
                f"  {stampede['count']} requests, {stampede['processes']} processes, upstream "
                f"{stampede['upstream_latency_ms']} ms: upstream calls "
                f"{stampede['upstream_calls']} (target 1){_mark(stampede['upstream_calls'] == 1)}"
                f", p50 {stampede['p50_ms']:.0f} ms, p99 {stampede['p99_ms']:.0f} ms, "
                f"statuses {stampede['statuses']}, peak db connections "
                f"{stampede['peak_db_connections']} ({stampede['peak_db_active']} active)")
        else:
            lines.append(f"  not available: {stampede.get('reason')}")
    worker = results.get("worker")
    if worker:
        lines.append("WORKER")
        if worker.get("available"):
            lines.append(f"  {worker['refreshed']:,}/{worker['connections']:,} due connections "
                         f"refreshed in {worker['seconds']:.1f}s by {worker['processes']} "
                         f"workers (--interval {worker['interval_s']}), upstream calls "
                         f"{worker['upstream_calls']:,}")
            lines += _worker_targets(worker)
            if "google_p50_ms" in worker:
                lines.append(f"  Google's latency as the workers saw it: p50 "
                             f"{worker['google_p50_ms']:.0f} ms, p90 "
                             f"{worker['google_p90_ms']:.0f} ms (the emulator waits "
                             f"{worker['upstream_latency_ms']} ms); users refreshed twice "
                             f"{worker['refreshed_twice']}" + _mark(worker["refreshed_twice"] == 0))
            if worker.get("error"):
                lines.append(f"  {worker['error']}")
        else:
            lines.append(f"  not available: {worker.get('reason')}")
    mem = results.get("memory")
    if mem:
        lines.append("MEMORY per gunicorn worker after the runs (target RSS < 100 MB)")
        totals = mem.get("total_pss_mb", {})
        for label, workers in mem.items():
            if label == "total_pss_mb":
                continue
            rss = ", ".join(f"{w['rss_mb']:.0f}" for w in workers)
            pss = ", ".join(f"{w['pss_mb']:.0f}" for w in workers)
            top = max((w["rss_mb"] for w in workers), default=0.0)
            lines.append(f"  {label:<16} RSS MB [{rss}]  PSS MB [{pss}]"
                         + (_mark(top < 100) if label.startswith("broker") else ""))
            if label in totals:
                total = totals[label]
                lines.append(f"    total PSS, arbiter + workers: {total:.0f} MB"
                             + (f"  target <= {PSS_TARGET_MB}" + (
                                 "  ok" if total <= PSS_TARGET_MB else
                                 f"  MISSED by {total - PSS_TARGET_MB:.0f} MB")
                                if label.startswith("broker") else ""))
    crash = results.get("crash")
    if crash:
        lines.append(f"CRASH  {crash.get('rounds', 0)} rounds of SIGKILL during refreshes")
        if crash.get("available"):
            lines.append(f"  {crash.get('summary') or 'no summary'}"
                         + _mark(bool(crash.get("passed"))) + f"  ({crash.get('seed', '')})")
        else:
            lines.append(f"  not available: {crash.get('reason')}")
    view = results.get("overview")
    if view:
        lines.append(f"OVERVIEW  {view['events']:,} audit events of one tenant's week "
                     f"(+{view['backlog']:,} not yet folded)")
        lines.append(f"  page queries {view['page_ms']:.1f} ms median vs plain GROUP BY "
                     f"{view['plain_group_by_ms']:.0f} ms: ratio "
                     f"{view['page_ms'] / view['plain_group_by_ms']:.3f}; one-time fold "
                     f"{view['fold_s']:.1f}s; counted {view['counted']:,}")
    tls = results.get("mtls")
    if tls:
        lines.append(f"MTLS  {tls['clients']} keep-alive clients, {tls['seconds']:.0f}s runs, "
                     "the same TLS 1.3 listener")
        for name in ("basic", "mtls"):
            row = tls[name]
            lines.append(f"  {name:<6} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
                         f"p99 {row['p99_ms']:.2f} ms")
        lines.append(f"  mtls/basic throughput {tls['ratio']:.2f}  target >= 0.9"
                     f"{_mark(tls['ratio'] >= 0.9)}")
        lines.append(f"  one mTLS fetch: {tls['keepalive_ms']:.2f} ms kept alive, "
                     f"{tls['fresh_ms']:.2f} ms with a new handshake "
                     f"(+{tls['handshake_ms']:.2f} ms)")
    if results.get("profile"):
        lines.append(f"PROFILE  {results['profile'].get('summary', '')}")
    from bench.refresh import lines as refresh_lines

    lines += refresh_lines(results.get("refresh"))
    lines += _keys_table(results.get("keys"))
    lines += _proxy_table(results.get("proxy"))
    if results.get("cluster"):
        from bench.cluster import table as cluster_table

        lines += cluster_table(results["cluster"])
    return "\n".join(lines)


def _proxy_table(proxy: dict[str, Any] | None) -> list[str]:
    """Return the PROXY section: Gmail through the broker against the same calls direct."""
    if not proxy:
        return []
    lines = [f"PROXY  getProfile through the broker vs straight to the emulator, {proxy['users']} "
             f"users, {proxy['workers']} {proxy['worker_class']} workers x {proxy['threads']}",
             f"{'target':<10}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
             f"{'errors':>8}{'broker CPU ms':>15}{'emulator CPU ms':>17}"]
    for key in ("direct@1", "proxy@1", "direct@32", "proxy@32"):
        row = proxy[key]
        target, clients = key.split("@")
        lines.append(f"{target:<10}{clients:>8}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}"
                     f"{row['p99_ms']:>10.2f}{row['errors'] + row['non_2xx']:>8}"
                     f"{row['broker_cpu_ms_per_call']:>15.2f}"
                     f"{row['emulator_cpu_ms_per_call']:>17.2f}")
    handout = proxy["handout@1"]["p50_ms"]
    lines.append(f"  added p50 at 1 client {proxy['added_p50_ms@1']:.2f} ms (a hand-out's p50: "
                 f"{handout:.2f} ms); throughput at 32 clients {proxy['throughput_ratio@32']:.2f}"
                 "x direct")
    flight = proxy["in_flight"]
    lines.append(f"  in flight: {flight['count']} calls at once, upstream 500 ms: "
                 f"{flight['count'] - flight['errors']} ok, {flight['errors']} errors, wall "
                 f"{flight['wall_ms']:.0f} ms, p99 {flight['p99_ms']:.0f} ms  target 500 with "
                 f"zero errors{_mark(flight['count'] >= 500 and flight['errors'] == 0)}")
    tail = proxy["handout_tail"]
    lines.append(f"  hand-out p99 at 32 clients: alone {tail['alone']['p99_ms']:.1f} ms, with "
                 f"the proxy saturated {tail['with_proxy']['p99_ms']:.1f} ms: "
                 f"{tail['p99_ratio']:.2f}x  target <= 2{_mark(tail['p99_ratio'] <= 2)}")
    stream = proxy["streaming"]
    lines.append(f"  streaming 25 MB down, 30 MB up (status {stream['upload_status']}): worker "
                 f"RSS growth {stream['rss_growth_mb']:.1f} MB  target < 10"
                 f"{_mark(stream['rss_growth_mb'] < 10 and stream['upload_status'] == 200)}")
    pss = sum(m["pss_mb"] for m in proxy["memory"])
    lines.append(f"  broker workers after the run: PSS {pss:.0f} MB in all")
    return lines


def _worker_targets(worker: dict[str, Any]) -> list[str]:
    """Return issue 18 item 3's lines: refreshes/s, one call per connection, hand-out p99."""
    if "rate" not in worker:
        return []
    rate, calls, count = worker["rate"], worker["upstream_calls"], worker["connections"]
    quiet, busy = worker["handout_p99_ms"], worker["handout_p99_busy_ms"]
    lines = [f"  {rate:.0f} refreshes/s with upstream {worker['upstream_latency_ms']} ms  "
             f"target >= 300" + ("  ok" if rate >= 300 else f"  MISSED by {300 - rate:.0f}/s")
             + f"  (CPU per refresh: workers {worker.get('worker_cpu_ms', 0):.2f} ms, "
             f"emulator {worker.get('emulator_cpu_ms', 0):.2f} ms)",
             *([f"    of which {worker['rate_beside_handout']:.0f}/s while the hand-out load "
                 f"ran, {worker['rate_alone']:.0f}/s the rest of the run"]
               if "rate_alone" in worker else []),
             f"  upstream calls {calls:,} for {count:,} due connections  target 1 each"
             + _mark(calls == count)]
    if quiet and busy:
        ratio = busy / quiet
        lines.append(f"  hand-out p99 at 32 clients {quiet:.1f} ms quiet, {busy:.1f} ms while "
                     f"refreshing: {ratio:.2f}x  target <= 1.5"
                     + ("  ok" if ratio <= 1.5 else f"  MISSED by {ratio - 1.5:.2f}x"))
    return lines + _cpu_lines(worker.get("cpu") or {})


CPU_GROUPS = {"handout": "hand-out broker", "workers": "workers", "emulator": "emulator",
              "postgres": "PostgreSQL", "machine": "machine"}
CPU_WINDOWS = {"handout_alone": "hand-out load alone", "beside": "hand-out load beside workers",
               "workers_alone": "workers alone"}


def _cpu_lines(cpu: dict[str, Any]) -> list[str]:
    """Return who used the cores in each window of the worker scenario, and the refresh
    stack's cost per refresh: what 300/s of it takes of the machine."""
    if not cpu:
        return []
    lines = [f"  CPU in cores of {cpu['cores']} (/proc; the machine's from /proc/stat):"]
    for window, label in CPU_WINDOWS.items():
        if window in cpu:
            used = ", ".join(f"{name} {cpu[window][key]:.2f}" for key, name in CPU_GROUPS.items()
                             if key in cpu[window])
            lines.append(f"    {label + ':':<31}{used}")
    per = cpu.get("ms_per_refresh_alone")
    if per:
        each = ", ".join(f"{CPU_GROUPS[key]} {ms:.2f} ms" for key, ms in per.items())
        lines.append(f"  per refresh, workers alone: {each}: 300/s takes "
                     f"{sum(per.values()) * 0.3:.2f} of {cpu['cores']} cores"
                     + ("" if "postgres" in per else " (PostgreSQL on another machine)"))
    return lines


def _keys_table(keys: dict[str, Any] | None) -> list[str]:
    """Return the KEYS section: hand-outs with the master in a key file and in SoftHSM2."""
    if not keys:
        return []
    if not keys.get("available"):
        return [f"KEYS  not available ({keys.get('reason', '')})"]
    lines = ["KEYS  master in a key file vs in SoftHSM2 (same run, interleaved)",
             f"{'master':<10}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"]
    for key, row in keys.items():
        if isinstance(row, dict) and "rps" in row:
            master, clients = key.split("@")
            lines.append(f"{master:<10}{clients:>8}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}"
                         f"{row['p99_ms']:>10.2f}{row['errors'] + row['non_2xx']:>8}")
    for clients in (1, 32):
        lines.append(f"  hsm/file at {clients} clients: {keys[f'hsm_over_file@{clients}']:.2f}")
    return lines


def write(results: dict[str, Any], command: str) -> Path:
    """Write results to bench/results/<timestamp>.json and latest.json; return the path."""
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {"command": command, "at": stamp, "machine": {
        "python": platform.python_version(), "platform": platform.platform()}, **results}
    if "fastpath" in results:
        document["ratios"] = ratios(results["fastpath"])
    path = RESULTS / f"bench-{stamp}.json"
    text = json.dumps(document, indent=2, default=str)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / "latest.txt").write_text(f"$ {command}\n{table(results)}\n")
    return path
