"""The cluster bench's short version: nginx, two replicas, two workers, a PostgreSQL primary
with a hot standby and Redis on this machine; each fault once, and what must hold after it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import cluster, stack
from bench.pgserver import _binary
from tests.ports import free_port


@pytest.fixture
def result(postgres_only: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Run the short plan once (about 40 s) and return what it saw."""
    if not Path(cluster.NGINX).exists() and not shutil.which("nginx"):
        pytest.fail("nginx is missing: .ci/test installs Debian's nginx")
    if not shutil.which("redis-server") or not _binary("pg_basebackup"):
        pytest.skip("needs redis-server and PostgreSQL's server binaries")
    # Ports below the ephemeral range, from this xdist worker's slice (tests/ports.py).
    monkeypatch.setattr(cluster, "free_port", free_port)
    monkeypatch.setattr(stack, "free_port", free_port)
    run = stack.Stack()
    try:
        yield cluster.exercise(run, cluster.SHORT, log=lambda _line: None)
    finally:
        run.close()


def test_the_cluster_survives_each_fault(result: dict[str, Any]) -> None:
    faults = {f["name"]: f for f in result["faults"]}
    plan = result["plan"]
    # Nothing fails once a fault's window has closed.
    assert all(not f["errors_after"] for f in faults.values()), result["faults"]

    warm = faults["warm-up (stale share)"]
    assert warm["upstream_calls"] == warm["due"] == plan["stale"]

    replica = faults["SIGKILL a replica"]
    assert set(replica["errors_during"]) <= {"502"}  # only what was in flight on it
    assert sum(replica["errors_during"].values()) <= plan["clients"]

    worker = faults["SIGKILL a worker mid-batch"]
    assert worker["leases_orphaned"] >= 1
    assert worker["leases_recovered"] == worker["leases_orphaned"]
    # Each due connection refreshed once; a call Google answered to the dead worker is redone.
    assert worker["due"] <= worker["upstream_calls"] <= worker["due"] + worker["leases_orphaned"]
    assert not worker["errors_during"]

    stampede = faults["stampede + SIGKILL a replica"]
    assert stampede["upstream_calls"] == 1
    assert set(stampede["facts"]["burst"]) <= {"200", "502"}, stampede["notes"]
    assert stampede["facts"]["burst"].get("200", 0) >= plan["stampede"] // 3

    failover = faults["PostgreSQL failover"]
    assert failover["facts"]["api"] == [503, "database_unavailable", "1"]
    assert failover["facts"]["readyz"] == 503
    assert failover["facts"]["page"] == [503, "text/html"]
    assert set(failover["errors_during"]) <= {"503"}

    redis = faults["Redis lost"]
    assert not redis["errors_during"]
    assert redis["facts"]["fallback_lines"] >= 1 and redis["facts"]["served_while_down"] > 0

    check = result["consistency"]
    assert check["opened"] == check["rows"] == plan["connections"] and not check["open_failed"]
    assert check["refresh_tokens_accepted"] == check["refresh_tokens_live"] > 0
    assert check["audit_verify"], check["audit_output"]
