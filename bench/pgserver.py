"""Throwaway PostgreSQL clusters: one for machines where no server answers at
BENCH_POSTGRES_URL, and a primary with a streaming hot standby for the cluster bench."""

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

    def _as_owner(self) -> None:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]

    def _pg_ctl_start(self) -> None:
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None  # noqa: S101 - checked by start()
        # Replication settings are PostgreSQL's defaults since 10; a standby needs hot_standby.
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c fsync=on -c hot_standby=on")
        self._run([pg_ctl, "-D", str(self.data), "-o", options, "-w", "-l",
                   str(self.folder / "log"), "start"])

    def start(self) -> str:
        """Create and start the cluster; return its URL."""
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("no PostgreSQL server answers and initdb/pg_ctl are not installed")
        self._as_owner()
        # -A trust also trusts replication connections from loopback: the standby needs them.
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        self._pg_ctl_start()
        return self.url

    def kill(self) -> None:
        """Stop the server at once, as a crash would (no shutdown checkpoint); keep the folder."""
        pg_ctl = _binary("pg_ctl")
        if pg_ctl and self.data.exists():
            self._run([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def stop(self) -> None:
        """Stop the cluster at once and remove its folder."""
        pg_ctl = _binary("pg_ctl")
        if pg_ctl and self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)


class StandbyCluster(TempCluster):
    """A streaming hot standby of a TempCluster: pg_basebackup -R, then promoted on demand."""

    def __init__(self, port: int, primary: TempCluster) -> None:
        super().__init__(port)
        self.primary = primary

    def start(self) -> str:
        """Copy the primary, start streaming from it; return this server's URL."""
        basebackup = _binary("pg_basebackup")
        if not basebackup or not _binary("pg_ctl"):
            raise RuntimeError("pg_basebackup/pg_ctl are not installed")
        self._as_owner()
        # -R writes primary_conninfo and standby.signal; -X stream copies the WAL alongside.
        self._run([basebackup, "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                   "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"])
        self._pg_ctl_start()
        return self.url

    def promote(self) -> None:
        """Make the standby a primary (pg_ctl promote waits until it accepts writes)."""
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None  # noqa: S101 - checked by start()
        self._run([pg_ctl, "-D", str(self.data), "-w", "promote"])

    def replay_lag(self) -> int:
        """Return the bytes of WAL the primary sent that this standby has not replayed."""
        with psycopg.connect(self.primary.url, connect_timeout=3) as conn:
            row = conn.execute("SELECT coalesce(max(pg_wal_lsn_diff(sent_lsn, replay_lsn)), -1) "
                               "FROM pg_stat_replication").fetchone()
        return int(row[0]) if row else -1
