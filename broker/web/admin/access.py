"""Who may use the admin pages: a signed-in admin, for their own tenant only."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, flash, redirect, request, url_for
from werkzeug.wrappers import Response

from broker.errors import Forbidden
from broker.models import User
from broker.web import guard

CLIENT_CACHE = "broker.client_cache"  # broker.api.auth keeps clients and policies here briefly


def require_admin() -> Response | None:
    """Send the signed-out to sign in; refuse everyone but the tenant's admins with a 403."""
    state = guard.current()
    if not state.valid:
        if state.may_resume:
            return redirect(url_for("auth.login", next=guard.safe_next(request.path)))
        if state.ended in guard.ENDED_MESSAGES:
            flash(guard.ENDED_MESSAGES[state.ended], guard.ended_kind(state.ended))
        return redirect(url_for("home.index"))
    if state.user is None or state.user.role != "admin":
        raise Forbidden("These pages are for your organization's administrators.")
    return None


def admin() -> User:
    """Return the signed-in admin (require_admin ran before every view)."""
    user = guard.current_user()
    if user is None or user.role != "admin":
        raise Forbidden("These pages are for your organization's administrators.")
    return user


def tenant_id() -> uuid.UUID:
    """Return the admin's own tenant: the only one these pages ever touch."""
    return admin().tenant_id


def actor() -> str:
    """Return the audit actor id of the signed-in admin."""
    return str(admin().id)


def ip() -> str:
    """Return the admin's address for the audit."""
    return str(guard.ip())


def forget_cached_clients() -> None:
    """Drop this process's cached clients so a change applies to the next API call here."""
    cache = current_app.extensions.get(CLIENT_CACHE)
    if cache is not None:
        cache.clear()


def done(message: str, endpoint: str, *, kind: str = "success", **values: Any) -> Response:
    """Say what happened (success, info, warning or error) and go back to a page (PRG)."""
    # Messages can echo typed input; the flash cookie must stay well under 4 KB.
    flash(message if len(message) <= 300 else message[:297] + "...", kind)
    return redirect(url_for(endpoint, **values), 303)
