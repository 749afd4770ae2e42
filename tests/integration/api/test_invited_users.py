"""POST /api/v1/token for users who have not signed in yet, and for suspended ones (issue 12.3)."""

from __future__ import annotations

from sqlalchemy import select, update

from broker.db import get_db
from broker.models import AuditEvent, User
from broker.tenancy import users
from tests.plugins.world import PUBLIC_URL, World


def _invite(world: World, email: str) -> User:
    with get_db(world.app).transaction() as session:
        return users.invite(session, world.tenant.id, email, actor="test")


def _refusals(world: World, user: User) -> list[str | None]:
    with get_db(world.app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent.reason).where(
                AuditEvent.action == "token.handout", AuditEvent.subject_user_id == user.id
            )
        ))


def test_invited_user_is_asked_to_sign_in_not_called_suspended(world: World) -> None:
    invited = _invite(world, "newcomer@example.test")
    response = world.token({"user": "newcomer@example.test"})
    assert response.status_code == 403, response.json
    assert response.json["error"] == "login_required"
    assert response.json["login_url"] == PUBLIC_URL + "/auth/login"
    assert "not signed in yet" in response.json["error_description"]
    assert _refusals(world, invited) == ["login_required"]


def test_only_a_suspended_user_is_user_suspended(world: World) -> None:
    with get_db(world.app).transaction() as session:
        session.execute(update(User).where(User.id == world.user.id).values(status="suspended"))
    response = world.token()
    assert response.status_code == 403 and response.json["error"] == "user_suspended"
    assert "login_url" not in response.json
