"""Two workers' first passes over a fresh database: the second waits for the first, no error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import text

from broker import worker
from broker.audit import fold_audit
from broker.db import get_db
from broker.metrics import CHECKPOINT_STATE
from broker.models import WorkerState

WAIT = 30.0  # seconds a condition may take on a loaded machine before the test gives up


def _blocked_on_a_lock(app: Flask) -> bool:
    with get_db(app).engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO worker_state%'"
        )).scalar())


@pytest.mark.parametrize("name, duty", [
    (CHECKPOINT_STATE, lambda app: worker.chain_audit(app)),
    ("audit-rollup", fold_audit),
])
def test_a_second_first_pass_waits_for_the_first_and_succeeds(
    postgres_only: None, make_app: Callable[..., Flask], name: str,
    duty: Callable[[Flask], int],
) -> None:
    app = make_app()
    with get_db(app).transaction() as session:
        assert session.get(WorkerState, name) is None  # a fresh database: no pass ran yet
    failures: list[BaseException] = []

    def second() -> None:
        try:
            duty(app)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    # The first pass has inserted its row and not committed yet when the second one starts.
    first = get_db(app).engine.connect()
    transaction = first.begin()
    first.execute(text("INSERT INTO worker_state (name, value, updated_at)"
                       " VALUES (:name, '', now())"), {"name": name})
    thread = threading.Thread(target=second)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not _blocked_on_a_lock(app):  # the second's insert waits on the first's row
            assert thread.is_alive() and time.monotonic() < deadline, failures
            time.sleep(0.05)
    finally:
        transaction.commit()
        first.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert failures == []
