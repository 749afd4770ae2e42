"""One benchmark run: its options, its stack, the small data set and the fast-path scenarios."""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import data, load
from bench.data import TenantInfo
from bench.load import Result
from bench.stack import Process, Stack, memory
from broker.server import default_worker_class, sensible_workers

SMALL_N = 1_000
TENANTS = 10


@dataclass
class Options:
    """What the command line asked for."""

    quick: bool = False
    duration: float = 15.0
    warmup: float = 3.0
    rounds: int = 3
    big_n: int = 1_000_000
    workers: int = 0
    threads: int = 0
    keep: bool = False
    worker_class: str = ""
    worker_nice: int = 0  # `broker worker --nice`

    def __post_init__(self) -> None:
        self.worker_class = self.worker_class or default_worker_class(False)
        default_workers, default_threads = sensible_workers(False, None, None, self.worker_class)
        self.workers = self.workers or default_workers
        self.threads = self.threads or default_threads


@dataclass
class Dataset:
    """A loaded database and the tenants the load generator uses."""

    name: str
    url: str
    tenants: list[TenantInfo]
    users: int
    load_seconds: float = 0.0


@dataclass
class Run:
    """The state one `python -m bench` invocation shares between scenarios."""

    options: Options
    stack: Stack
    results: dict[str, Any] = field(default_factory=dict)
    emulator_url: str = ""
    small: Dataset | None = None
    brokers: dict[str, Process] = field(default_factory=dict)
    floor: Process | None = None
    broker_ok: bool = False
    # Memory of servers stopped before the end, read just before they stopped.
    retired: dict[str, tuple[list[dict[str, float]], float]] = field(default_factory=dict)

    @property
    def keys(self) -> Any:
        """Return a KeyService on the run's master keyring."""
        return data.key_service(self.stack.master_keys)

    def log(self, message: str) -> None:
        """Print a progress line."""
        print(message, flush=True)

    def emulator(self) -> str:
        """Start the emulator once per run; return its URL."""
        if not self.emulator_url:
            self.emulator_url = self.stack.emulator().url
        return self.emulator_url

    def dataset(self, suffix: str, users: int, tenants: int = TENANTS, **load_args: Any) -> Dataset:
        """Create a database with the schema, tenants and `users` sealed rows."""
        name = self.stack.postgres.create(suffix)
        url = self.stack.postgres.url(name)
        keys = self.keys
        infos = data.prepare(url, keys, tenants)
        self.log(f"loading {users:,} users into {name}")
        expires = load_args.pop("token_expires_at", None) or (
            dt.datetime.now(dt.UTC) + dt.timedelta(hours=6))
        seconds = data.bulk_load(url, keys, data.Load(infos, 0, users, expires, **load_args),
                                 log=self.log)
        return Dataset(name, url, infos, users, seconds)

    def broker(self, label: str, dataset: Dataset, workers: int | None = None,
               **extra: str) -> Process:
        """Serve the broker on a dataset's database with the run's gunicorn settings."""
        env = self.stack.broker_env(dataset.name, self.emulator(), **extra)
        proc = self.stack.gunicorn(f"broker-{label}", "broker.wsgi:app", env,
                                   workers or self.options.workers, self.options.threads,
                                   self.options.worker_class)
        self.brokers[label] = proc
        return proc

    def ensure_small(self) -> Dataset:
        """Load the N=1,000 data set and serve the broker and the floor on it."""
        if self.small is None:
            self.small = self.dataset("small", SMALL_N)
            self.broker("small", self.small)
            env = self.stack.broker_env(self.small.name, self.emulator())
            self.floor = self.stack.gunicorn("floor", "bench.floor:app", env,
                                             self.options.workers, self.options.threads,
                                             self.options.worker_class)
            self.broker_ok = preflight(self, self.brokers["small"].url, self.small)
        return self.small


def preflight(run: Run, url: str, dataset: Dataset) -> bool:
    """Ask the broker for one token; say whether the token API answers as the load expects."""
    tenant = dataset.tenants[0]
    try:
        answer = httpx.post(
            url + "/api/v1/token", auth=(tenant.client_id, tenant.client_secret),
            json={"user": data.email(dataset.tenants, 0), "scopes": ["gmail.readonly"],
                  "min_ttl": 300}, timeout=30,
        )
    except httpx.HTTPError as exc:
        run.log(f"token API unreachable: {exc}")
        return False
    expected = data.Load(dataset.tenants, 0, 1, dt.datetime.now(dt.UTC)).access_token(0)
    if answer.status_code != 200 or answer.json().get("access_token") != expected:
        run.log(f"token API not usable yet: {answer.status_code} {answer.text[:300]}")
        return False
    return True


def measure(run: Run, label: str, proc: Process, script: Path, clients: int,
            seconds: float | None = None) -> Result:
    """Run wrk once and log the line."""
    result = load.run_wrk(label, proc.url, script, clients, seconds or run.options.duration)
    run.log(f"  {label:<22} c={clients:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms"
            f"  p99 {result.p99_ms:7.2f} ms  errors {result.errors} non-2xx {result.non_2xx}")
    return result


def summarise(results: Sequence[Result]) -> dict[str, Any]:
    """Return the medians of repeated runs of one target."""
    return {
        "rounds": len(results), "clients": results[0].clients,
        "rps": statistics.median(r.rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "requests": sum(r.requests for r in results),
        "errors": sum(r.errors for r in results), "non_2xx": sum(r.non_2xx for r in results),
    }


def scripts(run: Run, dataset: Dataset, tag: str) -> dict[str, Path]:
    """Write the Lua scripts for /healthz and for token requests against a data set."""
    folder = run.stack.workdir
    return {
        "healthz": load.write_script(folder / f"healthz-{tag}.lua", method="GET",
                                     url_path="/healthz"),
        "token": load.write_script(folder / f"token-{tag}.lua", method="POST",
                                   url_path="/api/v1/token", tenants=dataset.tenants,
                                   users=dataset.users),
    }


def fastpath(run: Run) -> dict[str, Any]:
    """Measure /healthz, the same-work floor and the broker at 1 and 32 clients, interleaved."""
    small = run.ensure_small()
    lua = scripts(run, small, "small")
    broker, floor = run.brokers["small"], run.floor
    assert floor is not None
    targets = [("healthz", broker, lua["healthz"]), ("floor", floor, lua["token"])]
    if run.broker_ok:
        targets.append(("broker", broker, lua["token"]))
    run.log(f"fast path: N={small.users:,}, gunicorn {run.options.workers} workers x "
            f"{run.options.threads} threads, {run.options.rounds} round(s) of "
            f"{run.options.duration:.0f}s")
    for _name, proc, script in targets:
        load.run_wrk("warmup", proc.url, script, 32, run.options.warmup)
    runs: dict[str, list[Result]] = {}
    for _ in range(run.options.rounds):
        for clients in (1, 32):
            for name, proc, script in targets:
                runs.setdefault(f"{name}@{clients}", []).append(
                    measure(run, name, proc, script, clients))
    out: dict[str, Any] = {key: summarise(value) for key, value in runs.items()}
    out["broker_available"] = run.broker_ok
    out["settings"] = {"workers": run.options.workers, "threads": run.options.threads,
                       "worker_class": run.options.worker_class,
                       "duration_s": run.options.duration, "users": small.users,
                       "cpus": os.cpu_count()}
    retire_floor(run)
    return out


def size(run: Run) -> dict[str, Any]:
    """Measure the fast path at N=1,000 and at the big N, interleaved, and their ratio."""
    small = run.ensure_small()
    if not run.broker_ok:
        return {"available": False, "reason": "the token API does not answer yet"}
    big = run.dataset("big", run.options.big_n)
    run.log(f"  {big.users:,} users loaded in {big.load_seconds:.0f}s")
    proc = run.broker("big", big)
    if not preflight(run, proc.url, big):
        return {"available": False, "reason": "the broker on the big data set refused"}
    lua_small, lua_big = scripts(run, small, "small")["token"], scripts(run, big, "big")["token"]
    load.run_wrk("warmup", proc.url, lua_big, 32, run.options.warmup)
    runs: dict[str, list[Result]] = {"small": [], "big": []}
    for _ in range(run.options.rounds):
        runs["small"].append(measure(run, f"broker N={small.users:,}", run.brokers["small"],
                                     lua_small, 32))
        runs["big"].append(measure(run, f"broker N={big.users:,}", proc, lua_big, 32))
    out = {"available": True, "small_n": small.users, "big_n": big.users,
           "load_seconds": big.load_seconds,
           "small": summarise(runs["small"]), "big": summarise(runs["big"])}
    out["ratio"] = out["big"]["rps"] / out["small"]["rps"] if out["small"]["rps"] else 0.0
    retire_server(run, "broker-big", proc)
    run.brokers.pop("big", None)
    return out


def served_memory(proc: Process) -> tuple[list[dict[str, float]], float]:
    """Return a server's memory per worker and its total PSS (arbiter and workers)."""
    workers = [memory(pid) for pid in proc.children()]
    # A `broker serve` is its arbiter and its workers: the figure is their sum.
    return workers, memory(proc.popen.pid)["pss_mb"] + sum(w["pss_mb"] for w in workers)


def retire_server(run: Run, label: str, proc: Process) -> None:
    """Stop a server once measured, keeping its memory for the report: the connections its
    pools keep would count against PostgreSQL's 100 while later scenarios start their own."""
    if proc.popen.poll() is None:
        run.retired[label] = served_memory(proc)
        run.stack.retire(proc)


def retire_floor(run: Run) -> None:
    """Stop the floor once the fast path is measured (nothing later compares with it)."""
    if run.floor is not None:
        retire_server(run, "floor", run.floor)
        run.floor = None


def rss(run: Run) -> dict[str, Any]:
    """Return RSS and PSS per gunicorn worker of every broker and the floor, after the runs."""
    out: dict[str, Any] = {}
    procs = {f"broker-{k}": v for k, v in run.brokers.items()}
    if run.floor is not None:
        procs["floor"] = run.floor
    totals: dict[str, float] = {}
    for label, proc in procs.items():
        if proc.popen.poll() is None:
            out[label], totals[label] = served_memory(proc)
    for label, (workers, total) in run.retired.items():
        out[label], totals[label] = workers, total
    if totals:
        out["total_pss_mb"] = totals
    return out


def settle(seconds: float = 1.0) -> None:
    """Let sockets in TIME_WAIT and background writes settle between phases."""
    time.sleep(seconds)
