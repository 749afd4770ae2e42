"""Serve an emulator app over real HTTP on a background thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from broker.emulator.context import EXTENSION


class QuietQueryHandler(WSGIRequestHandler):
    """Log requests without their query strings, which can carry tokens."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log the method, the path without its query, and the status."""
        path = getattr(self, "path", "").split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


def build_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """Return a threaded werkzeug server, so a hanging call never blocks the controls."""
    return make_server(host, port, app, threaded=True, request_handler=QuietQueryHandler)


def base_url(host: str, port: int) -> str:
    """Return the http URL of a host and port."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_in_thread(
    app: Flask, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Start serving `app` and return its base URL and a function that stops it."""
    server = build_server(app, host, port)
    thread = threading.Thread(
        target=server.serve_forever, name=f"google-emulator:{server.port}", daemon=True
    )
    thread.start()

    def stop() -> None:
        emulator = app.extensions.get(EXTENSION)
        if emulator is not None:
            # Wake calls stuck in a "hang" fault; they would otherwise outlive the server.
            emulator.faults.clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return base_url(host, server.port), stop
