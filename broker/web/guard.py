"""The request's browser session: clock, client IP, cookies and the sign-in requirement."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import current_app, flash, g, redirect, request, url_for
from werkzeug.wrappers import Response

from broker import clock as app_time
from broker.clientip import IPAddress, client_ip
from broker.config import Settings
from broker.db import get_db
from broker.identity import (
    BINDING_COOKIE,
    SESSION_COOKIE,
    TRANSACTION_TTL,
    SessionState,
    cookie_name,
    load_session,
    well_formed,
)
from broker.models import User

View = TypeVar("View", bound=Callable[..., Any])
KEEP_CONNECTED_COOKIE_AGE = 30 * 24 * 3600
ENDED_MESSAGES = {
    "idle": "Your session ended after a period of inactivity. Please sign in again.",
    "expired": "Your session reached its maximum length. Please sign in again.",
    "logout": "You are signed out.",
    "admin": "An administrator ended your session.",
    "suspended": "Your account is suspended.",
    "policy": "Your session ended because your network changed or the policy forbids it.",
}


def ended_kind(reason: str) -> str:
    """Return how a session's end is shown: a plain sign-out is news, the rest a warning."""
    return "info" if reason == "logout" else "warning"


def settings() -> Settings:
    """Return the app's settings."""
    return cast(Settings, current_app.config["BROKER"])


def now() -> dt.datetime:
    """Return the current time from the app's clock (tests inject one)."""
    return app_time.now()


def clock() -> app_time.Clock:
    """Return the app's clock for a service (it asks the app on each call)."""
    return app_time.app_clock(current_app._get_current_object())  # type: ignore[attr-defined]


def ip() -> IPAddress:
    """Return the caller's address, believing X-Forwarded-For only from trusted proxies."""
    return client_ip(request, settings().TRUSTED_PROXIES)


def _session_cookie() -> str:
    return cookie_name(SESSION_COOKIE, settings().https)


def _binding_cookie() -> str:
    return cookie_name(BINDING_COOKIE, settings().https)


def current() -> SessionState:
    """Return this request's session state, checked once per request."""
    if "broker_session_state" not in g:
        token = request.cookies.get(_session_cookie())
        state = SessionState()
        if token:
            with get_db().transaction() as session:
                state = load_session(session, token, now=now(), ip=ip())
            if not state.valid and not state.may_resume:
                g.clear_session_cookie = True
        g.broker_session_state = state
    return cast(SessionState, g.broker_session_state)


def render_anonymously() -> None:
    """Treat the rest of this request as signed out, without ending the session (an outage)."""
    g.broker_session_state = SessionState()


def current_user() -> User | None:
    """Return the signed-in user, or None."""
    state = current()
    return state.user if state.valid else None


def session_token() -> str | None:
    """Return the cookie value of a valid session (it binds connect transactions)."""
    return request.cookies.get(_session_cookie()) if current().valid else None


def binding() -> str | None:
    """Return this browser's pre-auth binding value, if it has one."""
    value = request.cookies.get(_binding_cookie())
    return value if well_formed(value) else None


def _set(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=settings().https, httponly=True,
        samesite="Lax",
    )


def _clear(response: Response, name: str) -> None:
    response.delete_cookie(
        name, path="/", secure=settings().https, httponly=True, samesite="Lax"
    )


def set_session_cookie(response: Response, token: str, max_age: int) -> None:
    """Hand the browser its new session id."""
    _set(response, _session_cookie(), token, max_age)


def clear_session_cookie(response: Response) -> None:
    """Make the browser forget its session id."""
    _clear(response, _session_cookie())


def set_binding_cookie(response: Response, value: str) -> None:
    """Bind the transactions this browser starts to it, for as long as they live."""
    _set(response, _binding_cookie(), value, int(TRANSACTION_TTL.total_seconds()))


def clear_binding_cookie(response: Response) -> None:
    """Drop the pre-auth binding once sign-in is done."""
    _clear(response, _binding_cookie())


def session_cookie_age(state_policy_max_age: int, keep_connected: bool) -> int:
    """Return the cookie lifetime: past the session's end only when it may be resumed."""
    return max(state_policy_max_age, KEEP_CONNECTED_COOKIE_AGE if keep_connected else 0)


def apply_cookie_changes(response: Response) -> Response:
    """Clear the session cookie when this request found the session over."""
    if g.get("clear_session_cookie") and not g.get("session_cookie_set"):
        clear_session_cookie(response)
    return response


def login_required(view: View) -> View:
    """Run the view only with a valid session; else resume silently or go to the start page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        state = current()
        if state.valid:
            return view(*args, **kwargs)
        if state.may_resume:
            return redirect(url_for("auth.login", next=request.path))
        if state.ended in ENDED_MESSAGES:
            flash(ENDED_MESSAGES[state.ended], ended_kind(state.ended))
        return redirect(url_for("home.index"))

    return cast(View, wrapped)


def safe_next(value: str | None) -> str | None:
    """Return `next` when it is a local path, else None (no open redirect)."""
    if not value or len(value) > 500 or not value.startswith("/"):
        return None
    if value.startswith(("//", "/\\")) or any(c in value for c in "\\\r\n\t") or ":" in value:
        return None
    if not value.isascii() or not value.isprintable():
        return None
    return value
