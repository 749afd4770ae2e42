"""The security headers every answer carries, pages and API alike."""

from __future__ import annotations

from werkzeug.wrappers import Response

CSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
SECURITY_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"))


def always(https: bool) -> tuple[tuple[str, str], ...]:
    """Return the headers every answer carries: HSTS too when the broker is on HTTPS."""
    return (*SECURITY_HEADERS, ("Strict-Transport-Security", HSTS)) if https else SECURITY_HEADERS


def add_security_headers(response: Response, https: bool) -> Response:
    """Add the headers every answer carries (those it does not set itself)."""
    # One pass over the headers, not a case-insensitive search per header: every answer
    # pays for this, the token hand-out included.
    present = {name.lower() for name, _ in response.headers.items()}
    wanted = [*always(https)]
    if response.mimetype == "text/html":
        wanted.append(("Cache-Control", "no-store"))
    response.headers.extend([(k, v) for k, v in wanted if k.lower() not in present])
    return response
