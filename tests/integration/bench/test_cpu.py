"""The bench's CPU meter: PostgreSQL's reaped backends and exited processes still count."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench.cpu import Kept, children, postgres_spent, postmaster, spent
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


BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_group_keeps_the_cpu_of_a_process_that_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    group = Kept(lambda: [child.pid])
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        burnt = group()
        assert burnt >= 0.2
    finally:
        child.communicate("")  # it exits and is reaped: its /proc entry is gone
    assert not Path(f"/proc/{child.pid}").exists()
    assert spent([child.pid]) == 0
    assert group() == burnt
