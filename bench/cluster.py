"""`python -m bench cluster`: a cluster on this machine, and faults injected one at a time.

nginx balances two `broker serve` replicas; two `broker worker` processes refresh ahead; a
PostgreSQL primary streams to a hot standby (both started here, on their own ports and
folders); Redis holds the shared rate limits; the emulator answers token calls in 200 ms.
32 clients fetch tokens through nginx the whole time. Each fault's window is logged, and a
table says what held: requests and errors during and after it, time to recover, upstream
calls against the refreshes due, leases orphaned and recovered; then a consistency pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from bench import data
from bench.load import basic
from bench.pgserver import StandbyCluster, TempCluster
from bench.run import Run
from bench.slow import grant
from bench.stack import (
    GOOGLE_CLIENT_ID,
    HOST,
    Postgres,
    Process,
    Stack,
    broker_command,
    child_env,
    free_port,
    wait_http,
)
from broker.db import Database
from broker.keys.service import access_token_bound
from broker.models import AccessToken, Connection
from broker.server import gunicorn_argv

NGINX = "/usr/sbin/nginx"
# Written by the bench: the upstream block is what README "Running a cluster" shows.
NGINX_CONF = """
daemon off;
pid {folder}/nginx.pid;
worker_processes 1;
worker_rlimit_nofile 8192;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  upstream broker {{
    # A replica that refuses a connection is skipped for 2 s; its share goes to the other.
{servers}
    keepalive 64;
  }}
  server {{
    listen {host}:{port} backlog=4096;
    client_max_body_size 40m;
    location / {{
      proxy_pass http://broker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      # Retry another replica only when the request was never sent (refused, reset on
      # connect): a POST that reached a replica is not replayed.
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
      proxy_connect_timeout 2s;
      # A hand-out may wait on Google (REFRESH_BUDGET, 10 s by default) before answering.
      proxy_read_timeout 30s;
      proxy_send_timeout 30s;
      # nginx buffers slow clients' requests, so gunicorn's workers never wait on them.
      proxy_request_buffering on;
      proxy_buffering on;
    }}
  }}
}}
"""
SESSION_COOKIES = ("broker_session", "__Host-broker_session")


@dataclass(frozen=True)
class Plan:
    """How big the run is: the full bench, or the reliability battery's short version."""

    connections: int = 100_000
    hot: int = 320  # users the clients ask for; live at the emulator
    stale: int = 32  # of the hot users, stale at the start (the hand-out refreshes them)
    due: int = 1_000  # connections the worker fault makes due
    clients: int = 32
    stampede: int = 1_000
    latency_ms: int = 200
    after: float = 5.0  # seconds of load watched after each fault ends
    redis_down: float = 5.0  # seconds Redis stays dead
    replica_workers: int = 1  # gunicorn workers per replica (two replicas on two cores)
    refresh_budget: float = 10.0  # BROKER_REFRESH_BUDGET: how long an orphaned lease lives
    # `broker worker --interval`: each idle pass scans for due rows, which over 100,000
    # connections costs enough CPU to starve the hand-out on two cores at 0.5 s.
    worker_interval: float = 2.0


# The refresh budget (a lease's life) stays the default 10 s: at 3 s, on two cores running
# the whole cluster beside the test suite, a worker's call to Google sometimes ran past its
# lease, was abandoned and made again (117 calls for 40 due connections in one CI run).
SHORT = Plan(connections=400, hot=40, stale=10, due=40, clients=8, stampede=100,
             after=1.0, redis_down=1.0, refresh_budget=10.0, worker_interval=0.5)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value; raise naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Sample:
    """One request: when it was sent and answered (monotonic), and its status (0: no answer)."""

    sent: float
    done: float
    status: int


class Clients:
    """N clients asking nginx for tokens of random hot users, in a thread, each answer kept."""

    def __init__(self, url: str, client_id: str, secret: str, users: list[str],
                 clients: int) -> None:
        self.url, self.users, self.clients = url, users, clients
        self.auth = basic(client_id, secret)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, http: httpx.AsyncClient) -> None:
        rng = random.Random()  # noqa: S311 - load, not security
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                answer = await http.post("/api/v1/token", json={
                    "user": rng.choice(self.users), "scopes": ["gmail.readonly"],
                    "min_ttl": 300})
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            self.samples.append(Sample(sent, time.monotonic(), status))
            if status == 0:
                await asyncio.sleep(0.05)  # nginx itself is gone: do not spin

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.clients,
                              max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=40,
                                     headers={"Authorization": self.auth}) as http:
            await asyncio.gather(*(self._one(http) for _ in range(self.clients)))

    def __enter__(self) -> Clients:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def between(self, start: float, end: float) -> list[Sample]:
        """Return the requests answered in [start, end)."""
        return [s for s in list(self.samples) if start <= s.done < end]


def statuses(samples: list[Sample]) -> dict[str, int]:
    """Count the answers that were not 200, by status ("0": no answer)."""
    return dict(sorted(Counter(str(s.status) for s in samples if s.status != 200).items()))


@dataclass
class Fault:
    """One fault's window and what was seen in it."""

    name: str
    start: float = 0.0
    end: float = 0.0
    requests_during: int = 0
    errors_during: dict[str, int] = field(default_factory=dict)
    requests_after: int = 0
    errors_after: dict[str, int] = field(default_factory=dict)
    recover_s: float = 0.0
    upstream_calls: int | None = None
    due: int | None = None
    leases_orphaned: int | None = None
    leases_recovered: int | None = None
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the checks assert on

    def close(self, clients: Clients, after: float) -> None:
        """Wait `after` seconds of load past the window's end and count the answers."""
        settle = self.end + after
        while time.monotonic() < settle:
            time.sleep(0.05)
        samples = list(clients.samples)
        # During: answered after the fault began and sent before it ended (a request in
        # flight across the end belongs to the window); after: sent once it had ended.
        during = [s for s in samples if s.done >= self.start and s.sent < self.end]
        later = [s for s in samples if s.sent >= self.end and s.done < settle]
        self.requests_during, self.errors_during = len(during), statuses(during)
        self.requests_after, self.errors_after = len(later), statuses(later)
        failed = [s.done for s in during + later if s.status != 200]
        self.recover_s = (max(failed) - self.start) if failed else 0.0


class Cluster:
    """Every process of the cluster, on loopback ports, stopped whatever happens."""

    def __init__(self, stack: Stack, plan: Plan, log: Callable[[str], None]) -> None:
        self.stack, self.plan, self.log = stack, plan, log
        self.primary = TempCluster(free_port())
        self.standby = StandbyCluster(free_port(), self.primary)
        self.name = "cluster"
        self.emulator_url = ""
        self.redis: Process | None = None
        self.redis_port = free_port()
        self.replica_ports = [free_port(), free_port()]
        self.replicas: list[Process] = []
        self.workers: list[Process] = []
        self.nginx: Process | None = None
        self.nginx_port = free_port()
        self.tenant: data.TenantInfo | None = None
        self.granted: list[int] = []
        self.env: dict[str, str] = {}

    # -- addresses ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Return nginx's URL: what clients use."""
        return f"http://{HOST}:{self.nginx_port}"

    def database_url(self) -> str:
        """Return the broker's multi-host URL: whichever of the two accepts writes."""
        return (f"postgresql+psycopg://postgres@/{self.name}?host={HOST}:{self.primary.port}"
                f"&host={HOST}:{self.standby.port}&target_session_attrs=read-write"
                "&connect_timeout=2")

    def conninfo(self) -> str:
        """Return the same multi-host target as a libpq string, for the bench's own reads."""
        return (f"host={HOST},{HOST} port={self.primary.port},{self.standby.port} "
                f"dbname={self.name} user=postgres target_session_attrs=read-write "
                "connect_timeout=2")

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the current primary and return its rows."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def email(self, index: int) -> str:
        """Return user `index`'s address."""
        assert self.tenant is not None  # noqa: S101 - set by load()
        return data.email([self.tenant], index)

    # -- start --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start PostgreSQL and its standby, load the data, then Redis, brokers and nginx."""
        plan = self.plan
        self.primary.start()
        self.stack.postgres = Postgres(self.primary.url)
        with psycopg.connect(self.primary.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
        self.emulator_url = self.stack.emulator().url
        self.load()
        self.standby.start()
        wait_for("the standby to replay the load", lambda: self.standby.replay_lag() == 0, 120)
        self.log(f"  PostgreSQL primary :{self.primary.port}, hot standby :{self.standby.port}")
        self.start_redis()
        httpx.post(self.emulator_url + "/_emulator/faults", json={
            "endpoint": "token", "latency_ms": plan.latency_ms, "count": -1},
            timeout=10).raise_for_status()
        self.env = self.stack.broker_env(
            self.name, self.emulator_url, BROKER_DATABASE_URL=self.database_url(),
            BROKER_REDIS_URL=f"redis://{HOST}:{self.redis_port}/0",
            BROKER_PUBLIC_URL=self.url, BROKER_TRUSTED_PROXIES="127.0.0.1/32",
            BROKER_BEHIND_PROXY="on",
            BROKER_REFRESH_BUDGET=str(plan.refresh_budget))
        self.replicas = [self.start_replica(index, wait=False) for index in range(2)]
        self.workers = [self.start_worker(n) for n in range(2)]
        for proc in self.replicas:
            wait_http(proc, proc.url + "/healthz", timeout=60)
        self.start_nginx()
        self.log(f"  nginx {self.url} over replicas :{self.replica_ports[0]} and "
                 f":{self.replica_ports[1]}, 2 workers, Redis :{self.redis_port}")

    def load(self) -> None:
        """Create the schema and the connections; the first ones are live at the emulator."""
        plan = self.plan
        url = f"postgresql+psycopg://postgres@{HOST}:{self.primary.port}/{self.name}"
        keys = data.key_service(self.stack.master_keys)
        tenants = data.prepare(url, keys, 1, prefix="c")
        self.tenant = tenants[0]
        live = plan.hot + plan.due + 1
        self.granted = list(range(live))
        self.log(f"  granting {live:,} emulator accounts, loading {plan.connections:,} "
                 "connections")
        with httpx.Client(base_url=self.emulator_url, timeout=30) as http, \
                ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(
                lambda i: grant(http, data.email(tenants, i), tenants[0].domain), self.granted))
        now = dt.datetime.now(dt.UTC)
        data.bulk_load(url, keys, data.Load(
            tenants, 0, plan.connections, now + dt.timedelta(hours=6),
            refresh_token=lambda i: tokens[i] if i < live else f"1//bench-unused-{i}"),
            log=lambda _line: None)
        # The stale share of the hot users, and the stampede's user (the last live one).
        self.make_stale([*range(plan.stale), live - 1], url)

    def make_stale(self, indexes: list[int], url: str | None = None) -> None:
        """Make these users' stored tokens expired."""
        emails = [self.email(i) for i in indexes]
        query = ("UPDATE access_tokens SET expires_at = now() - interval '5 minutes' "
                 "WHERE connection_id IN (SELECT id FROM connections WHERE email = ANY(%s))")
        if url is None:
            self.sql(query, (emails,))
            return
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                             autocommit=True) as conn:
            conn.execute(query, (emails,))

    def start_redis(self) -> None:
        """Start (or restart) the run's own Redis, without persistence."""
        server = ensure_binary("redis-server", "redis-server")
        self.redis = self.stack.spawn("redis", [
            server, "--port", str(self.redis_port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", str(self.stack.workdir)], os.environ, "")
        wait_for("Redis", lambda: _redis_ping(self.redis_port), 20)

    def start_replica(self, index: int, *, wait: bool = True) -> Process:
        """Start `broker serve`'s gunicorn for one replica on its fixed port."""
        port = self.replica_ports[index]
        worker_class = "gevent"
        argv = gunicorn_argv(HOST, port, self.plan.replica_workers, 1000, worker_class)
        env = dict(self.env)
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="broker-metrics-", dir=self.stack.workdir)
        proc = self.stack.spawn(f"replica-{index}", argv, env, f"http://{HOST}:{port}")
        if wait:
            wait_http(proc, proc.url + "/healthz", timeout=60)
        return proc

    def start_worker(self, index: int) -> Process:
        """Start one `broker worker`."""
        return self.stack.spawn(f"worker-{index}", [*broker_command(), "worker",
                                "--interval", str(self.plan.worker_interval)], self.env, "")

    def start_nginx(self) -> None:
        """Write the nginx configuration and start Debian's nginx in the foreground."""
        nginx = ensure_nginx()
        folder = self.stack.workdir / "nginx"
        folder.mkdir(exist_ok=True)
        servers = "\n".join(f"    server {HOST}:{port} max_fails=1 fail_timeout=2s;"
                            for port in self.replica_ports)
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, servers=servers, host=HOST,
                                          port=self.nginx_port))
        self.nginx = self.stack.spawn("nginx", [nginx, "-c", str(conf), "-p", str(folder),
                                                "-e", str(folder / "nginx-error.log")],
                                      os.environ, self.url)
        wait_http(self.nginx, self.url + "/readyz", timeout=30)

    def stop(self) -> None:
        """Kill every process at once (nothing here is worth a graceful stop), then PostgreSQL."""
        for proc in list(self.stack.processes):
            self.kill(proc)
        for server in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                server.stop()

    # -- helpers ------------------------------------------------------------------------------

    def token(self, index: int, timeout: float = 30) -> httpx.Response:
        """Ask nginx for user `index`'s token."""
        assert self.tenant is not None  # noqa: S101 - set by load()
        return httpx.post(self.url + "/api/v1/token", auth=(
            self.tenant.client_id, self.tenant.client_secret), json={
            "user": self.email(index), "scopes": ["gmail.readonly"], "min_ttl": 300},
            timeout=timeout)

    def pids(self, proc: Process) -> set[int]:
        """Return a process's pid and its children's (gunicorn's workers)."""
        return {proc.popen.pid, *proc.children()}

    def leases_of(self, pids: set[int]) -> set[str]:
        """Return the connections whose live refresh lease a process among `pids` holds."""
        rows = self.sql("SELECT id::text, refresh_lease_owner FROM connections "
                        "WHERE refresh_lease_until > now()")
        return {conn_id for conn_id, owner in rows
                if owner and int(str(owner).split(":")[-2]) in pids}

    def kill(self, proc: Process) -> None:
        """SIGKILL a process and its group at once, and forget it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)
        if proc in self.stack.processes:
            self.stack.processes.remove(proc)

    def log_lines(self, needle: str) -> int:
        """Count the replicas' log lines containing `needle` (every replica's log, so far)."""
        total = 0
        for path in self.stack.workdir.glob("replica-*.log"):
            total += path.read_text(errors="replace").count(needle)
        return total


def _redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_binary(name: str, package: str, fallback: str = "") -> str:
    """Return a Debian program, installing its package with apt-get when it is missing."""
    found = shutil.which(name) or (fallback if fallback and Path(fallback).exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{name} is missing: apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env,
                   timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True,
                   capture_output=True, env=env, timeout=600)
    return shutil.which(name) or fallback or name


def ensure_nginx() -> str:
    """Return Debian's nginx, installed when missing (as .ci/test does)."""
    return ensure_binary("nginx", "nginx", NGINX)


# -- the faults ------------------------------------------------------------------------------


def warm_up(c: Cluster, clients: Clients) -> Fault:
    """Not a fault: the clients start, and the hand-out refreshes the stale share once each."""
    fault = Fault("warm-up (stale share)", start=time.monotonic())
    before = 0  # the emulator answered no refresh before the first hand-out
    stale = [c.email(i) for i in range(c.plan.stale)]
    wait_for("the stale share to be refreshed", lambda: c.sql(
        "SELECT count(*) = %s FROM access_tokens t JOIN connections c ON c.id = t.connection_id "
        "WHERE c.email = ANY(%s) AND t.expires_at > now() + interval '30 minutes'",
        (len(stale), stale))[0][0], 120)
    fault.end = time.monotonic()
    fault.upstream_calls = refreshes_of(c.emulator_url, stale) - before
    fault.due = c.plan.stale
    return fault


def kill_replica(c: Cluster, clients: Clients) -> Fault:
    """SIGKILL one replica mid-load; nginx moves traffic; start it again on its port."""
    fault = Fault("SIGKILL a replica", start=time.monotonic())
    c.kill(c.replicas[0])
    # Hand-outs continue on the other replica before this one is back.
    wait_for("hand-outs through the surviving replica", lambda: len(
        [s for s in clients.between(fault.start, time.monotonic()) if s.status == 200]) >= 20,
        30)
    c.replicas[0] = c.start_replica(0)
    fault.end = time.monotonic()
    fault.facts = {"in_flight_bound": c.plan.clients}
    fault.notes.append(f"failed requests bounded by the {c.plan.clients} in flight")
    return fault


def refreshes_of(emulator_url: str, emails: list[str]) -> int:
    """Return how many refreshes the emulator answered for these accounts."""
    calls = httpx.get(emulator_url + "/_emulator/calls", timeout=10).json()
    counts = calls.get("refreshes_by_account", {})
    return sum(int(counts.get(email, 0)) for email in emails)


def kill_worker(c: Cluster, _clients: Clients) -> Fault:
    """Make connections due; SIGKILL a worker holding leases; start it again; count refreshes."""
    plan = c.plan
    first = plan.hot
    indexes = list(range(first, first + plan.due))
    emails = [c.email(i) for i in indexes]
    before = refreshes_of(c.emulator_url, emails)
    fault = Fault("SIGKILL a worker mid-batch", start=time.monotonic())
    c.sql("UPDATE connections SET last_used_at = now() WHERE email = ANY(%s)", (emails,))
    c.sql("UPDATE access_tokens SET expires_at = now() + interval '90 seconds' "
          "WHERE connection_id IN (SELECT id FROM connections WHERE email = ANY(%s))", (emails,))

    def holder() -> tuple[int, set[str]] | None:
        for n, proc in enumerate(c.workers):
            held = c.leases_of({proc.popen.pid})
            if held:
                return n, held
        return None

    number, _ = wait_for("a worker holding leases", holder, 60, every=0.01)
    victim = c.workers[number]
    c.kill(victim)
    orphaned = c.leases_of({victim.popen.pid})  # held at its death: nobody else clears them
    c.workers[number] = c.start_worker(number)
    query = ("SELECT count(*) FROM access_tokens t JOIN connections c ON c.id = t.connection_id "
             "WHERE c.email = ANY(%s) AND t.expires_at > now() + interval '30 minutes'")
    wait_for("every due connection refreshed", lambda: c.sql(query, (emails,))[0][0] == len(
        emails), 120 + plan.due / 10, every=0.2)
    fault.end = time.monotonic()
    recovered = c.sql("SELECT count(*) FROM connections c JOIN access_tokens t ON "
                      "t.connection_id = c.id WHERE c.id::text = ANY(%s) AND "
                      "t.expires_at > now() + interval '30 minutes'", (list(orphaned),))[0][0]
    # Only these connections' refreshes: others (hot ones coming due) may refresh meanwhile.
    fault.upstream_calls = refreshes_of(c.emulator_url, emails) - before
    fault.due = plan.due
    fault.leases_orphaned, fault.leases_recovered = len(orphaned), int(recovered)
    fault.notes.append("extra upstream calls = orphaned calls Google answered to a dead worker")
    return fault


def stampede(c: Cluster, _clients: Clients) -> Fault:
    """1,000 requests for one stale token over both replicas; kill the one without the lease."""
    plan = c.plan
    assert c.tenant is not None  # noqa: S101 - set by load()
    user = plan.hot + plan.due  # the last live user, stale since the load
    before = refreshes_of(c.emulator_url, [c.email(user)])
    spec = {"host": HOST, "port": c.nginx_port, "path": "/api/v1/token", "count": plan.stampede,
            "authorization": basic(c.tenant.client_id, c.tenant.client_secret),
            "body": {"user": c.email(user), "scopes": ["gmail.readonly"], "min_ttl": 300},
            "connect_seconds": 1.0, "timeout": 120}
    spec_file = c.stack.workdir / "stampede.json"
    spec_file.write_text(json.dumps(spec))
    with spec_file.open() as stdin:
        burst = subprocess.Popen([sys.executable, "-m", "bench.burst"], stdin=stdin,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=child_env(os.environ))
    wait_for("the stampede's upstream call",
             lambda: refreshes_of(c.emulator_url, [c.email(user)]) > before, 60, every=0.01)
    fault = Fault("stampede + SIGKILL a replica", start=time.monotonic())
    holders = [n for n, proc in enumerate(c.replicas) if c.leases_of(c.pids(proc))]
    victim = 1 if holders == [0] else 0
    c.kill(c.replicas[victim])
    out, err = burst.communicate(timeout=180)
    if burst.returncode != 0:
        raise RuntimeError(f"burst failed: {err[-800:]}")
    c.replicas[victim] = c.start_replica(victim)
    fault.end = time.monotonic()
    summary = json.loads(out)
    fault.upstream_calls = refreshes_of(c.emulator_url, [c.email(user)]) - before
    fault.due = 1
    fault.facts = {"burst": summary["statuses"], "killed": victim, "lease_holders": holders}
    fault.notes.append(f"burst of {plan.stampede}: {summary['statuses']}; killed replica "
                       f"{victim}, lease held by {holders or 'nobody left'}")
    fault.notes.append("a killed lease holder is the worker fault's case: its lease expires")
    return fault


def failover(c: Cluster, _clients: Clients) -> Fault:
    """Stop the primary, check the gap's answers, promote the standby; no broker restart."""
    plan = c.plan
    c.make_stale(list(range(plan.stale, plan.stale * 2)))  # refreshes in flight at the cut
    lag = c.standby.replay_lag()
    fault = Fault("PostgreSQL failover", start=time.monotonic())
    c.primary.kill()
    api = wait_for("the API's 503", lambda: _is_503(c.token(plan.stale, timeout=10)), 30)
    ready = wait_for("/readyz failing", lambda: _status(c.url + "/readyz") == 503, 30)
    # A session cookie makes the page ask the database who is signed in.
    cookie = "; ".join(f"{name}={'s' * 43}" for name in SESSION_COOKIES)
    page = httpx.get(c.url + "/connections", headers={"Cookie": cookie}, timeout=10)
    gap = {"api": f"{api.status_code} {api.json().get('error')} Retry-After "
                  f"{api.headers.get('Retry-After')}",
           "readyz": 503 if ready else "?",
           "page": f"{page.status_code} {page.headers.get('content-type', '').split(';')[0]}"
                   f"{' -> ' + page.headers['Location'] if 'Location' in page.headers else ''}"}
    promoted = time.monotonic()
    c.standby.promote()
    wait_for("/readyz through the new primary", lambda: _status(c.url + "/readyz") == 200, 60)
    wait_for("a hand-out through the new primary", lambda: c.token(0).status_code == 200, 60)
    fault.end = time.monotonic()
    fault.facts = {"api": [api.status_code, api.json().get("error"),
                           api.headers.get("Retry-After")],
                   "readyz": 503 if ready else None, "page": [page.status_code,
                   page.headers.get("content-type", "").split(";")[0]], "lag_bytes": lag}
    fault.notes.append(f"gap: API {gap['api']}; /readyz {gap['readyz']}; page {gap['page']}")
    fault.notes.append(f"WAL not replayed at the cut: {lag} bytes; promoted in "
                       f"{fault.end - promoted:.1f}s, no broker restart")
    return fault


def lose_redis(c: Cluster, clients: Clients) -> Fault:
    """SIGKILL Redis: limits count per process (metric, log line); restart it; shared again."""
    assert c.redis is not None  # noqa: S101 - started
    lost_before = c.log_lines("rate limits: Redis unavailable")
    back_before = c.log_lines("rate limits: Redis answers again")
    fault = Fault("Redis lost", start=time.monotonic())
    c.kill(c.redis)
    wait_for("the replicas' fallback log line", lambda: c.log_lines(
        "rate limits: Redis unavailable") > lost_before, 30)
    settle = time.monotonic() + c.plan.redis_down
    while time.monotonic() < settle:
        time.sleep(0.05)
    served = len([s for s in clients.between(fault.start, time.monotonic()) if s.status == 200])
    c.start_redis()
    wait_for("the replicas' recovery log line", lambda: c.log_lines(
        "rate limits: Redis answers again") > back_before, 30)
    fault.end = time.monotonic()
    lost = c.log_lines("rate limits: Redis unavailable") - lost_before
    fault.facts = {"fallback_lines": lost, "served_while_down": served}
    fault.notes.append(f"fail open per process: {lost} fallback log line(s), {served} hand-outs "
                       "served while down; broker_rate_limit_fallback_total counts decisions")
    return fault


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def _is_503(answer: httpx.Response) -> httpx.Response | None:
    body = answer.json() if answer.headers.get("content-type", "").startswith(
        "application/json") else {}
    ok = (answer.status_code == 503 and body.get("error") == "database_unavailable"
          and answer.headers.get("Retry-After"))
    return answer if ok else None


FAULTS = (kill_replica, kill_worker, stampede, failover, lose_redis)


# -- the consistency pass ----------------------------------------------------------------------


def consistency(c: Cluster) -> dict[str, Any]:
    """Open every connection's sealed tokens; refresh every live one at the emulator; verify."""
    httpx.delete(c.emulator_url + "/_emulator/faults", timeout=10)
    keys = data.key_service(c.stack.master_keys)
    database = Database(c.database_url())
    opened = failed = 0
    refresh_tokens: dict[str, str] = {}
    live = {c.email(i) for i in c.granted}
    try:
        with database.transaction(write=False) as session:
            rows = session.execute(select(Connection, AccessToken).join(
                AccessToken, AccessToken.connection_id == Connection.id)).all()
            for conn, token in rows:
                try:
                    refresh = keys.open(session, conn.tenant_id, conn.id, "refresh_token",
                                        conn.refresh_token).decode()
                    keys.open(session, conn.tenant_id, token.id, "access_token", token.token,
                              bound=access_token_bound(conn.id, token.scope_key))
                    opened += 1
                    if conn.email in live:
                        refresh_tokens[conn.email] = refresh
                except Exception:  # noqa: BLE001 - counted, reported
                    failed += 1
    finally:
        database.dispose()
    secret = c.stack.google_secret

    def accepted(refresh: str) -> bool:
        answer = httpx.post(c.emulator_url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": refresh,
            "client_id": GOOGLE_CLIENT_ID, "client_secret": secret}, timeout=30)
        return answer.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        good = sum(pool.map(accepted, refresh_tokens.values()))
    done = subprocess.run([*broker_command(), "audit", "verify"], env=child_env(c.env),
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=c.stack.workdir)
    return {"rows": len(rows), "opened": opened, "open_failed": failed,
            "refresh_tokens_live": len(refresh_tokens), "refresh_tokens_accepted": good,
            "audit_verify": done.returncode == 0,
            "audit_output": (done.stdout + done.stderr).strip().splitlines()[-1:]}


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(stack: Stack, plan: Plan, log: Callable[[str], None]) -> Iterator[Cluster]:
    """Start a cluster and stop it afterwards, whatever happens."""
    cluster = Cluster(stack, plan, log)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def exercise(stack: Stack, plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the cluster, run the faults one at a time under load, then the consistency pass."""
    started = time.monotonic()
    with running(stack, plan, log) as c:
        assert c.tenant is not None  # noqa: S101 - set by load()
        first = c.token(0)
        if first.status_code != 200:
            raise RuntimeError(f"the cluster does not hand out: {first.status_code} {first.text}")
        users = [c.email(i) for i in range(plan.hot)]
        faults: list[Fault] = []
        with Clients(c.url, c.tenant.client_id, c.tenant.client_secret, users,
                     plan.clients) as clients:
            warm = warm_up(c, clients)
            warm.close(clients, 0)
            faults.append(warm)
            for run_fault in FAULTS:
                fault = run_fault(c, clients)
                log(f"  {fault.name}: window {fault.end - fault.start:.1f}s")
                fault.close(clients, plan.after)
                faults.append(fault)
                log(f"    during {fault.requests_during} req {fault.errors_during or 'no errors'}"
                    f"; after {fault.requests_after} req {fault.errors_after or 'no errors'}"
                    f"; recovered in {fault.recover_s:.1f}s")
            total = len(clients.samples)
        check = consistency(c)
    return {"available": True, "plan": asdict(plan), "faults": [asdict(f) for f in faults],
            "requests": total, "consistency": check, "seconds": time.monotonic() - started}


def cluster(run: Run) -> dict[str, Any]:
    """`python -m bench cluster` (with --quick: the short plan)."""
    plan = SHORT if run.options.quick else Plan()
    run.log(f"cluster: {plan.connections:,} connections, {plan.clients} clients, "
            f"upstream latency {plan.latency_ms} ms")
    return exercise(run.stack, plan, run.log)


def _errors(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}x{v}" for k, v in counts.items()) or "-"


def table(result: dict[str, Any] | None) -> list[str]:
    """Return the cluster's table: one row per fault, then the consistency pass."""
    if not result:
        return []
    if not result.get("available"):
        return [f"CLUSTER  not available ({result.get('reason', '')})"]
    plan = result["plan"]
    lines = [f"CLUSTER  {plan['connections']:,} connections, {plan['clients']} clients, "
             f"nginx + 2 replicas + 2 workers, PostgreSQL primary + hot standby, Redis, "
             f"upstream {plan['latency_ms']} ms; {result['requests']:,} requests in "
             f"{result['seconds']:.0f}s",
             f"{'fault':<30}{'window s':>9}{'req in':>8}{'errors in':>16}{'req after':>10}"
             f"{'errors after':>14}{'recover s':>10}{'upstream/due':>14}"
             f"{'leases orphaned/back':>22}"]
    for f in result["faults"]:
        upstream = "" if f["upstream_calls"] is None else f"{f['upstream_calls']}/{f['due']}"
        leases = ("" if f["leases_orphaned"] is None
                  else f"{f['leases_orphaned']}/{f['leases_recovered']}")
        lines.append(f"{f['name']:<30}{f['end'] - f['start']:>9.1f}{f['requests_during']:>8}"
                     f"{_errors(f['errors_during']):>16}{f['requests_after']:>10}"
                     f"{_errors(f['errors_after']):>14}{f['recover_s']:>10.1f}{upstream:>14}"
                     f"{leases:>22}")
        lines += [f"    {note}" for note in f["notes"]]
    k = result["consistency"]
    lines.append(f"consistency: {k['opened']:,}/{k['rows']:,} connections open "
                 f"({k['open_failed']} failed); {k['refresh_tokens_accepted']}/"
                 f"{k['refresh_tokens_live']} live refresh tokens accepted by the emulator; "
                 f"broker audit verify {'passes' if k['audit_verify'] else 'FAILS'}")
    return lines
