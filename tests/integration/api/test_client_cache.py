"""The API client cache: an expired entry is read once however many requests wait for it."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import event

from broker.db import get_db
from tests.plugins.world import World


def test_requests_for_an_expired_client_wait_for_one_read(world: World) -> None:
    cache = world.app.extensions["broker.client_cache"]
    cache.clear()
    engine = get_db(world.app).engine
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM api_clients" in statement:
            reads.append(statement)
            time.sleep(0.2)  # hold the first read open while the other requests arrive

    found: list[Any] = []
    event.listen(engine, "before_cursor_execute", count)
    try:
        threads = [threading.Thread(target=lambda: found.append(
            cache.get(world.app, world.client_id))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(reads) == 1
    assert len(found) == 6 and all(info is not None and info.id == world.client_id
                                   for info in found)
