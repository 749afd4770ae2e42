"""Page blueprints, CSRF, security headers, the canonical host and HTML error pages."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, redirect, request
from werkzeug.wrappers import Response

from broker import scopes
from broker.clock import utcnow
from broker.headers import add_security_headers

# Probes, metrics, the API, metadata and the RISC receiver answer on any host: load balancers,
# jobs and Google call them directly.
ANY_HOST_PATHS = ("/healthz", "/readyz", "/metrics", "/api/", "/.well-known/", "/risc/",
                  "/proxy/", "/upload/")
CALLBACK_PATHS = ("/auth/callback", "/connections/callback")


def security_headers(response: Response) -> Response:
    """Add the headers every answer carries (those it does not set itself)."""
    return add_security_headers(response, current_app.config["BROKER"].https)


def canonical_host() -> Response | None:
    """Redirect page requests on another host to BROKER_PUBLIC_URL's."""
    if not current_app.config.get("BROKER_CANONICAL_HOST", True):
        return None
    if request.path.startswith(ANY_HOST_PATHS):
        return None
    public = urlsplit(current_app.config["BROKER"].PUBLIC_URL)
    if request.host.lower() == public.netloc.lower():
        return None
    target = f"{public.scheme}://{public.netloc}{request.path}"
    # A callback's query carries a code: never repeat it in a Location header.
    if request.query_string and request.path not in CALLBACK_PATHS:
        target += "?" + request.query_string.decode("ascii", "replace")
    return redirect(target, 302 if request.method in ("GET", "HEAD") else 307)


def format_time(value: dt.datetime | None) -> str:
    """Show a UTC time with a Z, or 'never'."""
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def short_scope(scope: str) -> str:
    """Show a scope's short name (gmail.readonly)."""
    return scope.removeprefix(scopes.PREFIX)


def _template_context() -> dict[str, Any]:
    from broker.web import csrf, guard

    return {
        "csrf_token": csrf.csrf_token,
        "csrf_field": csrf.csrf_field,
        "current_user": guard.current_user,
        "scope_explanations": scopes.GMAIL_SCOPES,
    }


def init_app(app: Flask) -> None:
    """Register page blueprints and the page-wide hooks."""
    from broker.web import admin, auth, connections, csrf, errors, guard, home

    app.extensions.setdefault("broker.clock", utcnow)
    # Test clients talk to "localhost"; tests of the redirect switch it on explicitly.
    app.config.setdefault("BROKER_CANONICAL_HOST", not app.testing)
    app.before_request(canonical_host)
    app.before_request(csrf.protect)
    app.after_request(guard.apply_cookie_changes)
    app.after_request(security_headers)
    app.context_processor(_template_context)
    app.add_template_filter(format_time, "utc")
    app.add_template_filter(short_scope, "short_scope")
    errors.init_app(app)
    for module in (home, auth, connections):
        app.register_blueprint(module.bp)
    admin.init_app(app)
