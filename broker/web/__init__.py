"""Page blueprints, CSRF, security headers and HTML error pages."""

from __future__ import annotations

from flask import Flask, Response


def security_headers(response: Response) -> Response:
    """Add the headers every answer carries."""
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def init_app(app: Flask) -> None:
    """Register page blueprints and the page-wide response hooks."""
    app.after_request(security_headers)
