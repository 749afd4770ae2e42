"""The bench's same-work floor still does a hand-out's database work on today's schema."""

from __future__ import annotations

import io
import json

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bench.floor import Floor
from broker.db import get_db
from broker.models import AuditEvent
from tests.plugins.world import World


def test_the_floor_reads_and_audits_like_a_hand_out(postgres_only: None, world: World) -> None:
    assert world.token().status_code == 200  # a stored access token for the floor to read
    url = make_url(world.app.config["BROKER"].database_url).set(drivername="postgresql")
    body = json.dumps({"user": world.user.email}).encode()
    environ = {
        "HTTP_AUTHORIZATION": world.auth, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
    }
    with get_db(world.app).transaction(write=False) as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    floor = Floor(url.render_as_string(hide_password=False))
    try:
        status, answer = floor.hand_out(environ)
    finally:
        floor.pool.close()
    assert status == "200 OK", answer
    with get_db(world.app).transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == before + 1
