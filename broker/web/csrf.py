"""CSRF tokens for every state-changing page request, derived from the server-side session."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request
from markupsafe import Markup, escape

from broker.identity import Refusal
from broker.web import guard

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
View = TypeVar("View", bound=Callable[..., Any])


def csrf_token() -> str:
    """Return this session's CSRF token ('' without a valid session)."""
    state = guard.current()
    if not state.valid or state.browser_session is None:
        return ""
    key = str(current_app.config["SECRET_KEY"]).encode()
    message = b"csrf|" + state.browser_session.token_hash.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def csrf_field() -> Markup:
    """Return the hidden form field carrying the CSRF token."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FIELD, escape(csrf_token()))


def exempt(view: View) -> View:
    """Mark a view that authenticates its POSTs otherwise (none of the pages do)."""
    view.csrf_exempt = True  # type: ignore[attr-defined]
    return view


def protect() -> None:
    """Refuse a state-changing page request without this session's CSRF token."""
    if request.method in SAFE_METHODS or request.url_rule is None:
        return
    if request.path.startswith(("/api/", "/proxy/", "/upload/")):
        return  # the API authenticates every call; it has no cookies to ride on
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "csrf_exempt", False):
        return
    sent = request.form.get(FIELD) or request.headers.get(HEADER) or ""
    expected = csrf_token()
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Refusal("csrf_failed")
