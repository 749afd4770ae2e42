"""The stack of one run: PostgreSQL databases, the emulator and gunicorn on loopback ports."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from bench.pgserver import TempCluster, reachable
from broker.server import gunicorn_argv

HOST = "127.0.0.1"
# Calls the emulator serves at once: the proxy scenario keeps 500 Gmail calls in flight.
EMULATOR_THREADS = 600
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GOOGLE_CLIENT_ID = "bench-broker.apps.googleusercontent.com"
DB_PREFIX = "bench_"
_OWNED_DB = re.compile(r"^bench_(\d+)_[a-z0-9]+$")
ROOT = Path(__file__).resolve().parent.parent


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return env with this checkout first on PYTHONPATH (bench is not an installed package)."""
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH")) if p)
    return out


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Postgres:
    """Create and drop this run's databases on the server at BENCH_POSTGRES_URL."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """Connect to the maintenance database in autocommit mode."""
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def url(self, name: str, *, driver: str = "postgresql+psycopg") -> str:
        """Return the URL of one of this run's databases (SQLAlchemy form by default)."""
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        user = info.get("user", "postgres")
        host, port = info.get("host", HOST), info.get("port", "5432")
        password = f":{info['password']}" if info.get("password") else ""
        return f"{driver}://{user}{password}@{host}:{port}/{name}"

    def create(self, suffix: str) -> str:
        """Create an empty database for this run and return its name."""
        name = f"{DB_PREFIX}{os.getpid()}_{suffix}"
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return name

    def drop_all(self) -> None:
        """Drop every database this run created (connections are forced out)."""
        with self.admin() as conn:
            for name in reversed(self.created):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
        self.created.clear()

    def drop_stale(self) -> list[str]:
        """Drop databases left by earlier runs whose process is gone (killed with -9)."""
        dropped = []
        with self.admin() as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
            for name in names:
                match = _OWNED_DB.match(name)
                if match and not _pid_alive(int(match.group(1))):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)))
                    dropped.append(name)
        return dropped

    def connections(
        self, conn: psycopg.Connection[tuple[object, ...]], name: str
    ) -> tuple[int, int]:
        """Return (all, active) backends connected to a database."""
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,),
        ).fetchone()
        assert row is not None
        return int(str(row[0])), int(str(row[1]))


@dataclass
class Process:
    """A child process in its own session, so its whole group can be stopped."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def stop(self, grace: float = 8.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def children(self) -> list[int]:
        """Return the pids whose parent is this process (gunicorn's workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.popen.pid:
                pids.append(int(entry.name))
        return sorted(pids)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the process's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """Everything one run starts, stopped in reverse order whatever happens."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-run-")))
    postgres: Postgres = field(default_factory=Postgres)
    processes: list[Process] = field(default_factory=list)
    master_keys: str = field(default_factory=lambda: "bench-mk:" + base64.b64encode(
        secrets.token_bytes(32)).decode())
    google_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    keep_workdir: bool = False
    cluster: TempCluster | None = None

    def start_postgres(self) -> str:
        """Use the server at BENCH_POSTGRES_URL, or start a throwaway cluster when none answers."""
        if reachable(self.postgres.admin_url):
            return self.postgres.admin_url
        self.cluster = TempCluster(free_port())
        self.postgres = Postgres(self.cluster.start())
        return self.postgres.admin_url

    def close(self) -> None:
        """Stop every process, drop every database and remove the work folder."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        self.processes.clear()
        with contextlib.suppress(Exception):
            self.postgres.drop_all()
        if self.cluster is not None:
            self.cluster.stop()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str], url: str) -> Process:
        """Start a child in its own process group with its output in the work folder."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(env), start_new_session=True, cwd=self.workdir,
            )
        proc = Process(name, popen, log, url)
        self.processes.append(proc)
        return proc

    def retire(self, proc: Process) -> None:
        """Stop one process early and forget it."""
        proc.stop()
        if proc in self.processes:
            self.processes.remove(proc)

    def emulator(self) -> Process:
        """Start the Google emulator with the broker's OAuth client, keeping connections alive.

        Served by gunicorn's threaded worker, one process (the emulator's state lives in it),
        not by `broker emulator`'s werkzeug server: werkzeug closes every connection after one
        answer, so each refresh paid a TCP connect in the broker and a new thread in the
        emulator, which Google's keep-alive spares a real broker (issue 18).
        """
        port = free_port()
        url = f"http://{HOST}:{port}"
        argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1",
                "--threads", str(EMULATOR_THREADS), "--keep-alive", "75",
                "--bind", f"{HOST}:{port}", "--log-level", "warning",
                "broker.emulator:create_app()"]
        proc = self.spawn("emulator", argv, os.environ, url)
        wait_http(proc, url + "/.well-known/openid-configuration")
        httpx.post(url + "/_emulator/clients", json={
            "client_id": GOOGLE_CLIENT_ID, "client_secret": self.google_secret,
            "redirect_uris": [f"http://{HOST}/auth/callback"],
        }, timeout=10).raise_for_status()
        return proc

    def broker_env(self, database: str, emulator_url: str, **extra: str) -> dict[str, str]:
        """Return the environment of a broker process on one of this run's databases."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update({
            "BROKER_INSTANCE_PATH": str(self.workdir / "instance"),
            "BROKER_DATABASE_URL": self.postgres.url(database),
            "BROKER_MASTER_KEYS": self.master_keys,
            "BROKER_SECRET_KEY": "bench-" + "x" * 40,
            "BROKER_GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID,
            "BROKER_GOOGLE_CLIENT_SECRET": self.google_secret,
            "BROKER_GOOGLE_DISCOVERY_URL": emulator_url + "/.well-known/openid-configuration",
            "BROKER_GMAIL_API_URL": emulator_url,
            # The benchmark measures the hand-out, not the limiter refusing it.
            "BROKER_API_RATE_LIMIT": "1000000/second",
            **extra,
        })
        return env

    def gunicorn(
        self, name: str, app: str, env: Mapping[str, str], workers: int, threads: int,
        worker_class: str = "gthread",
    ) -> Process:
        """Serve a WSGI app with `broker serve`'s gunicorn command line and settings."""
        port = free_port()
        argv = gunicorn_argv(HOST, port, workers, threads, worker_class)
        argv[-1] = app
        env = dict(env)
        # As `broker serve` does: prometheus-client's multiprocess mode with a fresh folder.
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="broker-metrics-", dir=self.workdir)
        proc = self.spawn(name, argv, env, f"http://{HOST}:{port}")
        wait_http(proc, proc.url + "/healthz")
        return proc


def broker_command() -> list[str]:
    """Return the argv prefix that runs the `broker` CLI of this interpreter."""
    script = Path(sys.executable).parent / "broker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from broker.cli import main; main()"]


def wait_http(proc: Process, url: str, timeout: float = 30.0) -> None:
    """Wait until a URL answers 200, or raise with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} in {timeout:.0f}s:\n{proc.log_tail()}")


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGINT (even when inherited as ignored), SIGTERM and SIGHUP into KeyboardInterrupt."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous: dict[int, Callable[..., object] | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, raise_interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def memory(pid: int) -> dict[str, float]:
    """Return a process's RSS and PSS in MB (PSS counts shared pages fairly)."""
    out = {"rss_mb": 0.0, "pss_mb": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss_mb"] = int(line.split()[1]) / 1024
    return out
