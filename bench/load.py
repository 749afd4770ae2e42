"""The load generator: wrk (Debian's package) in its own process, driven by a Lua script."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.data import TenantInfo

MARK = "BENCH_JSON "
LUA = """
local users = {users}
local auths = {{{auths}}}
local domains = {{{domains}}}
local method, path, body_on = "{method}", "{path}", {body}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  if not body_on then
    return wrk.format(method, path)
  end
  local i = math.random(0, users - 1)
  local t = i % #auths + 1
  local body = '{{"user":"u' .. i .. '@' .. domains[t] .. '","scopes":["gmail.readonly"],'
    .. '"min_ttl":300}}'
  return wrk.format(method, path, {{["Authorization"] = auths[t],
    ["Content-Type"] = "application/json"}}, body)
end
"""
# wrk's summary as one JSON line after MARK (a format template: {mark}, braces doubled).
DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{mark}{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"mean_us":%.1f,"max_us":%d,"errors":%d,"non_2xx":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""
LUA += DONE


@dataclass(frozen=True)
class Result:
    """What one wrk run measured."""

    label: str
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        """Return requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing Debian's package (apt-get install -y wrk)")
    for argv in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"],
                 ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if argv[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


def basic(client_id: str, secret: str) -> str:
    """Return an HTTP Basic Authorization value."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def write_script(path: Path, *, method: str, url_path: str,
                 tenants: Sequence[TenantInfo] = (), users: int = 1) -> Path:
    """Write the Lua script: GET a path, or POST token requests for random users among N."""
    auths = ", ".join(f'"{basic(t.client_id, t.client_secret)}"' for t in tenants)
    domains = ", ".join(f'"{t.domain}"' for t in tenants)
    path.write_text(LUA.format(
        users=users, auths=auths, domains=domains, method=method, path=url_path,
        body="true" if tenants else "false", mark=MARK,
    ))
    return path


def run_wrk(label: str, base_url: str, script: Path, clients: int, seconds: float) -> Result:
    """Run wrk against a base URL for `seconds` with `clients` connections; parse its figures."""
    threads = max(1, min(clients, 2))
    argv = [ensure_wrk(), f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(script), base_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk gave no figures ({done.returncode}): {done.stderr[-500:]}")
    raw = json.loads(line[len(MARK):])
    return Result(
        label=label, clients=clients, requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6, p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000, mean_ms=raw["mean_us"] / 1000,
        errors=raw["errors"], non_2xx=raw["non_2xx"],
    )
