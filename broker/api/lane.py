"""POST /api/v1/token's common case, served in front of Flask by the view's own functions.

Nearly every hand-out is a small JSON body under Basic credentials. For it, Flask's request
context, URL matching, eight hooks and response object cost about a third of the broker's
CPU per hand-out (issue 18), so this WSGI layer serves that case itself: the same admission,
parsing, decision, audit and answer (`v1.hand_out`), the same headers, the same JSON errors.
Everything else (another path or method, another content type or way to authenticate, a body
that may name a client assertion, a chunked or large body) goes to Flask as it came.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.wrappers import Response

from broker import metrics
from broker.api import unexpected
from broker.api.auth import may_name_assertion, verify_basic
from broker.api.v1 import MAX_BODY, NO_STORE, hand_out
from broker.clock import get_clock
from broker.errors import BrokerError, error_response
from broker.headers import add_security_headers, always
from broker.logging import start_request

PATH = "/api/v1/token"
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _claims(environ: dict[str, Any]) -> int:
    """Return the body's length if the lane serves this request, else 0 (Flask serves it)."""
    if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
        return 0
    if not str(environ.get("HTTP_AUTHORIZATION", "")).startswith(("Basic ", "basic ")):
        return 0
    if environ.get("HTTP_TRANSFER_ENCODING"):
        return 0
    mimetype = str(environ.get("CONTENT_TYPE", "")).partition(";")[0].strip().lower()
    if mimetype != "application/json":
        return 0
    length = str(environ.get("CONTENT_LENGTH", ""))
    if not length.isascii() or not length.isdigit() or not 0 < int(length) <= MAX_BODY:
        return 0
    return int(length)


class TokenLane:
    """WSGI middleware: serve the common token hand-out, pass every other request to Flask."""

    def __init__(self, app: Flask, flask: WSGIApp) -> None:
        self.app = app
        self.flask = flask
        self.headers = [("Content-Type", "application/json"), *NO_STORE.items(),
                        *always(app.config["BROKER"].https)]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve POST /api/v1/token with Basic credentials and a small JSON body; else Flask."""
        length = _claims(environ)
        if not length:
            return self.flask(environ, start_response)
        raw = environ["wsgi.input"].read(length)
        if len(raw) != length or may_name_assertion(raw):
            # Flask reads the body as it came: it answers a short one, and refuses a second
            # authentication method, exactly as it always has.
            environ["wsgi.input"] = io.BytesIO(raw)
            return self.flask(environ, start_response)
        with self.app.app_context():
            rid = start_request(str(environ.get("HTTP_X_REQUEST_ID", "")))
            try:
                with metrics.FETCH_SECONDS.time():
                    body = hand_out(environ, raw, self._basic(environ)).encode()
            except BrokerError as exc:
                return self._answer(error_response(exc), rid, environ, start_response)
            except Exception as exc:  # noqa: BLE001 - as the API's blueprints answer it
                return self._answer(unexpected(exc), rid, environ, start_response)
        start_response("200 OK", [*self.headers, ("Content-Length", str(len(body))),
                                  ("X-Request-Id", rid)])
        return [body]

    def _basic(self, environ: dict[str, Any]) -> Callable[[], Any]:
        app, header = self.app, str(environ["HTTP_AUTHORIZATION"])
        return lambda: verify_basic(app, header, get_clock(app)())

    def _answer(self, response: Response, rid: str, environ: dict[str, Any],
                start_response: StartResponse) -> Iterable[bytes]:
        """Send a refusal with the headers Flask's hooks add to every answer."""
        add_security_headers(response, self.app.config["BROKER"].https)
        response.headers["X-Request-Id"] = rid
        return response(environ, start_response)


def init_app(app: Flask) -> None:
    """Put the lane in front of Flask's WSGI app."""
    app.wsgi_app = TokenLane(app, app.wsgi_app)  # type: ignore[method-assign]
