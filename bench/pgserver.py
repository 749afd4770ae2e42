"""A throwaway PostgreSQL cluster for machines where no server answers at BENCH_POSTGRES_URL."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg


def reachable(url: str) -> bool:
    """Say whether a PostgreSQL server answers at url."""
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class TempCluster:
    """initdb + pg_ctl in a temporary folder on a loopback port, removed by stop()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.folder / "data"
        self._prefix: list[str] = []

    @property
    def url(self) -> str:
        """Return the maintenance database's URL."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        subprocess.run([*self._prefix, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        """Create and start the cluster; return its URL."""
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("no PostgreSQL server answers and initdb/pg_ctl are not installed")
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c fsync=on")
        self._run([pg_ctl, "-D", str(self.data), "-o", options, "-w", "-l",
                   str(self.folder / "log"), "start"])
        return self.url

    def stop(self) -> None:
        """Stop the cluster at once and remove its folder."""
        pg_ctl = _binary("pg_ctl")
        if pg_ctl and self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)
