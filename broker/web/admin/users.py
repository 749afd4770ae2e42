"""Admin page /admin/users: invite, suspend, reactivate, delete, end sessions, re-consent."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from flask import Blueprint, current_app, render_template, request
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from broker.connections import revoke_before_delete
from broker.db import get_db
from broker.errors import Conflict, InvalidRequest
from broker.tenancy import users
from broker.web import guard
from broker.web.admin import access

bp = Blueprint("users", __name__, url_prefix="/users")


def _page(invite_form: dict[str, str] | None = None, invite_error: str = "") -> str:
    with get_db().transaction(write=False) as session:
        rows = users.list_users(session, access.tenant_id())
    return render_template(
        "admin/users.html", rows=rows, me=access.admin(), roles=users.ROLES,
        invite_form=invite_form or {"email": "", "role": "member"}, invite_error=invite_error,
    )


@bp.get("")
def index() -> str:
    """List users with status, last sign-in and connection status; invite form."""
    return _page()


@bp.post("")
def invite() -> Response | tuple[str, int]:
    """Invite an exact email address."""
    try:
        with get_db().transaction() as session:
            user = users.invite(
                session, access.tenant_id(), request.form.get("email", ""),
                role=request.form.get("role", "member"), actor=access.actor(), ip=access.ip(),
            )
    except (InvalidRequest, Conflict) as refused:
        typed = {"email": request.form.get("email", "")[:320],
                 "role": request.form.get("role", "member")}
        return _page(typed, f"Not invited: {refused.description}"), refused.status_code
    return access.done(f"Invited {user.email}.", "admin.users.index")


def _act(label: str, action: Callable[[Session], str]) -> Response:
    try:
        with get_db().transaction() as session:
            message = action(session)
    except (InvalidRequest, Conflict) as refused:
        return access.done(f"{label} refused: {refused.description}", "admin.users.index",
                           kind="error")
    return access.done(message, "admin.users.index")


@bp.post("/<uuid:user_id>/suspend")
def suspend(user_id: uuid.UUID) -> Response:
    """Suspend a user: their sessions end and hand-outs stop at once."""
    def run(session: Session) -> str:
        user = users.set_status(
            session, access.tenant_id(), user_id, "suspended", now=guard.now(),
            actor=access.actor(), ip=access.ip(),
        )
        return f"{user.email} is suspended."
    return _act("Suspension", run)


@bp.post("/<uuid:user_id>/reactivate")
def reactivate(user_id: uuid.UUID) -> Response:
    """Let a suspended user back in."""
    def run(session: Session) -> str:
        user = users.set_status(
            session, access.tenant_id(), user_id, "active", now=guard.now(),
            actor=access.actor(), ip=access.ip(),
        )
        return f"{user.email} is {user.status}."
    return _act("Reactivation", run)


@bp.post("/<uuid:user_id>/role")
def role(user_id: uuid.UUID) -> Response:
    """Make a user an admin or a member (the last active admin stays one)."""
    def run(session: Session) -> str:
        user = users.set_role(
            session, access.tenant_id(), user_id, request.form.get("role", ""),
            actor=access.actor(), ip=access.ip(),
        )
        return f"{user.email} is now {user.role}."
    return _act("Role change", run)


@bp.post("/<uuid:user_id>/end-sessions")
def end_sessions(user_id: uuid.UUID) -> Response:
    """End every browser session of a user."""
    def run(session: Session) -> str:
        count = users.end_all_sessions(
            session, access.tenant_id(), user_id, now=guard.now(), actor=access.actor(),
            ip=access.ip(),
        )
        return f"Ended {count} session{'s' if count != 1 else ''}."
    return _act("Ending sessions", run)


@bp.post("/<uuid:user_id>/reconsent")
def reconsent(user_id: uuid.UUID) -> Response:
    """Stop hand-outs for a user's grant until they connect Gmail again."""
    public = current_app.config["BROKER"].PUBLIC_URL.rstrip("/")

    def run(session: Session) -> str:
        connection = users.force_reconsent(
            session, access.tenant_id(), user_id, now=guard.now(),
            reauth_url=public + "/connections", actor=access.actor(), ip=access.ip(),
        )
        return f"{connection.email} must connect Gmail again before jobs get tokens."
    return _act("Re-consent", run)


@bp.get("/<uuid:user_id>/delete")
def confirm_delete(user_id: uuid.UUID) -> str:
    """Ask before deleting a user."""
    with get_db().transaction(write=False) as session:
        user = users.get_user(session, access.tenant_id(), user_id)
    return render_template("admin/user_delete.html", user=user)


@bp.post("/<uuid:user_id>/delete")
def delete(user_id: uuid.UUID) -> Response:
    """Revoke the user's grant at Google, erase it and delete the user."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with get_db().transaction(write=False) as session:
            ids = users.deletable_connection_ids(
                session, access.tenant_id(), user_id, actor=access.actor()
            )
        revoke_before_delete(app, ids, actor_id=access.actor())
    except (InvalidRequest, Conflict) as refused:
        return access.done(f"Deletion refused: {refused.description}", "admin.users.index",
                           kind="error")

    def run(session: Session) -> str:
        email = users.delete_user(
            session, access.tenant_id(), user_id, actor=access.actor(), ip=access.ip()
        )
        return f"{email} is deleted and their Gmail access revoked."
    return _act("Deletion", run)
