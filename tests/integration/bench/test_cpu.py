"""The bench's CPU meter finds PostgreSQL's processes and counts the backends it reaped."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench.cpu import children, postgres_spent, postmaster, spent
from tests.plugins.world import World


def test_postgres_cpu_counts_a_backend_after_it_exits(postgres_only: None, world: World) -> None:
    url = make_url(world.app.config["BROKER"].database_url).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    root = postmaster(dsn)
    assert Path(f"/proc/{root}/comm").read_text().strip() == "postgres"
    before = postgres_spent(root)
    with psycopg.connect(dsn) as conn:
        pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        assert pid in children(root)
        # About a CPU second of work in this backend, so the clock's ticks cannot round it away.
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000) AS a"
                     " CROSS JOIN generate_series(1, 3) AS b")
        busy = spent([pid])
    assert busy > 0.05
    # Once reaped (its /proc entry gone), its time sits in the postmaster's children's time.
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert postgres_spent(root) - before >= busy
