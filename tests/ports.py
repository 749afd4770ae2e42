"""Loopback ports for the servers that tests start in other processes.

A port the kernel gives for a bind to port 0 comes from its ephemeral range, which it also
gives out as the source port of every outgoing connection (database, HTTP, browser). Between
picking such a port and a child process binding it, the port can be taken, and the child then
fails with "address in use". Ports below that range are never given out by the kernel, and
each xdist worker picks from its own slice, so parallel workers never collide either.
"""

from __future__ import annotations

import os
import random
import socket

BASE, SLICE, SLICES = 20_000, 2_000, 6  # 20000-31999: below Linux's ephemeral 32768-60999


def _worker_ports() -> list[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    number = int(worker[2:]) + 1 if worker[:2] == "gw" and worker[2:].isdigit() else 0
    start = BASE + (number % SLICES) * SLICE
    ports = list(range(start, start + SLICE))
    random.shuffle(ports)
    return ports


# Ports this process has handed out: two calls before either child binds (a server and its
# second listener) once drew the same port, 1 in 2,000, and the child refused to start.
_given: set[int] = set()


def free_port() -> int:
    """Return a loopback port that nothing listens on, from this worker's slice, and that
    this process has not handed out before (until the slice runs out)."""
    for fresh in (True, False):
        for port in _worker_ports():
            if fresh and port in _given:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
        _given.clear()  # every port was handed out once: reuse those nothing listens on
    raise RuntimeError("no free loopback port in this test worker's slice")
