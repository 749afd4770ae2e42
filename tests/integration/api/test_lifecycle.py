"""User and tenant deletion revoke grants at Google through the broker's revoke callback."""

from __future__ import annotations

from sqlalchemy import func, select

from broker.db import get_db
from broker.models import Connection
from tests.integration.cli.test_audit import invoke
from tests.plugins.world import World


def connections(world: World) -> int:
    """Count the stored connections."""
    with get_db(world.app).transaction(write=False) as session:
        return int(session.scalar(select(func.count()).select_from(Connection)) or 0)


def test_user_delete_revokes_and_erases_the_connection(world: World) -> None:
    assert world.token().status_code == 200
    result = invoke(world.app, "user", "delete", world.user.email, "--tenant",
                    world.tenant.slug, "--yes")
    assert result.exit_code == 0, result.output
    assert world.emulator.calls()["revoke"] == 1
    assert connections(world) == 0
    assert world.token().json["error"] == "unknown_user"


def test_tenant_delete_revokes_before_shredding(world: World) -> None:
    result = invoke(world.app, "tenant", "delete", world.tenant.slug, "--yes")
    assert result.exit_code == 0, result.output
    assert world.emulator.calls()["revoke"] == 1
    refreshed = world.emulator.control("GET", "calls")
    assert refreshed["revoke"] == 1
    assert world.token().status_code == 401  # the client went with its tenant
