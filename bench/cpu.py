"""CPU by process group, read from /proc: which processes used the machine's cores in a window."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.data import libpq

TICKS = os.sysconf("SC_CLK_TCK")
# A group's processes, asked at every reading: gunicorn's workers and PostgreSQL's backends
# come and go.
Pids = Callable[[], list[int]]


def _fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def spent(pids: list[int], reaped: bool = False) -> float:
    """Return the CPU seconds processes spent; with `reaped`, their waited-for children's too."""
    total = 0
    for pid in pids:
        fields = _fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if reaped:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / TICKS


class Kept:
    """The CPU seconds of a changing set of processes, keeping what one that exited (or was
    reaped) had spent when last read, so that a group's total never goes back."""

    def __init__(self, pids: Pids) -> None:
        self.pids = pids
        self._last: dict[int, float] = {}

    def __call__(self) -> float:
        """Return the group's CPU seconds so far."""
        for pid in self.pids():
            self._last[pid] = spent([pid]) or self._last.get(pid, 0.0)
        return sum(self._last.values())


def children(parent: int) -> list[int]:
    """Return the pids whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


def postmaster(url: str) -> int:
    """Return the pid of the PostgreSQL server at `url` (the parent of one of its backends)."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    backend = int(row[0]) if row else 0
    fields = _fields(backend) if _postgres(backend) else None
    # In a container or on another host the pid is not ours, or names someone else's process.
    if fields is None or not _postgres(int(fields[1])):
        raise RuntimeError("PostgreSQL's backend is not a process of this machine")
    return int(fields[1])


def postgres_spent(root: int) -> float:
    """Return the CPU seconds a PostgreSQL server spent: its live processes and the exited
    backends it reaped (counted in the postmaster's children's time)."""
    return spent([root], reaped=True) + spent(children(root))


def machine_busy() -> float:
    """Return the CPU seconds all cores spent busy since boot (/proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


@dataclass(frozen=True)
class Reading:
    """CPU seconds per group (and the whole machine's) at one instant."""

    at: float
    groups: Mapping[str, float]

    def cores(self, since: Reading) -> dict[str, float]:
        """Return the cores each group used on average between `since` and this reading."""
        seconds = self.at - since.at
        if seconds <= 0:
            return {}
        return {name: max(0.0, (value - since.groups.get(name, 0.0)) / seconds)
                for name, value in self.groups.items()}


class Meter:
    """Read the CPU of named process groups, and of the machine, at chosen instants."""

    def __init__(self) -> None:
        self.groups: dict[str, Callable[[], float]] = {"machine": machine_busy}

    def add(self, name: str, read: Callable[[], float]) -> None:
        """Add a group: a function returning its CPU seconds so far."""
        self.groups[name] = read

    def read(self) -> Reading:
        """Return every group's CPU seconds now."""
        return Reading(time.monotonic(), {name: read() for name, read in self.groups.items()})
