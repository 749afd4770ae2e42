"""JSON log lines with request ids, and the redaction filter on every handler."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from typing import Any

from flask import Flask, Response, g, has_app_context, has_request_context, request

# Query strings carry codes and states; bearer-like strings are tokens whatever their source.
_QUERY = re.compile(r"(\?|%3F)[^\s\"']*", re.IGNORECASE)
_SECRETISH = re.compile(
    r"(ya29\.[\w.-]+|1//[\w.-]+|4/[\w.-]+|eyJ[\w-]+\.[\w-]+\.[\w-]*"
    r"|(?i:bearer|basic)\s+[\w.~+/=-]+"
    r"|(?i:(?:access|refresh|id)_token|code|client_secret|code_verifier|password|state)"
    r"[\"']?\s*[:=]\s*[\"']?[^\s\"'&,}]+)"
)
REDACTED = "[redacted]"
# A caller's request id lands in logs, audit rows (64 characters) and a response header: only
# a short ASCII token is kept (str.isalnum would pass any Unicode letter or digit).
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def redact(text: str) -> str:
    """Remove query strings and anything that looks like a token or secret."""
    return _SECRETISH.sub(REDACTED, _QUERY.sub(r"\1" + REDACTED, text))


class RedactionFilter(logging.Filter):
    """Rewrite every record's message through `redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id()
        if rid or has_request_context():
            line["request_id"] = rid or None
        for key in ("event", "tenant", "client_id", "outcome", "reason"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str)


def configure(level: str = "INFO") -> None:
    """Send JSON lines to stderr through the redaction filter; cap authlib at INFO."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RedactionFilter())
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request at INFO: a JSON line per proxied Gmail call and per refresh,
    # which our own audit and metrics already record (and which costs CPU per call).
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # authlib logs PKCE verifiers and issued tokens at DEBUG.
    logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLevelName(level)))
    for existing in root.handlers:
        if not any(isinstance(f, RedactionFilter) for f in existing.filters):
            existing.addFilter(RedactionFilter())


def request_id() -> str:
    """Return the current request's id ('' outside a request)."""
    # Kept on the app context's `g`: the token API's lane serves requests without Flask's
    # request context (broker.api.lane).
    return str(g.get("request_id", "")) if has_app_context() else ""


def start_request(incoming: str) -> str:
    """Give the current request its id: the caller's X-Request-Id when safe, else a new one."""
    g.request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else secrets.token_hex(12)
    return str(g.request_id)


def _start_request() -> None:
    start_request(request.headers.get("X-Request-Id", ""))


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = request_id()
    return response


def _forget_request(_exc: BaseException | None) -> None:
    # An app context a test (or a CLI command) holds outlives the request: its later log
    # lines and audit rows must not carry this request's id.
    g.pop("request_id", None)


def init_app(app: Flask) -> None:
    """Configure logging once and give every request an id."""
    if not app.config.get("TESTING"):
        configure(app.config["BROKER"].LOG_LEVEL)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_forget_request)
