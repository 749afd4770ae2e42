"""Serve an emulator app over real HTTP on a background thread."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler

from broker.emulator.context import EXTENSION


class QuietQueryHandler(WSGIRequestHandler):
    """Log requests without their query strings, which can carry tokens.

    HTTP/1.1 for chunked answers; werkzeug still closes every connection after one answer (it
    cannot drain an unread request body safely), where Google keeps it alive. The benchmarks
    serve the emulator with gunicorn's threaded worker instead (`bench/stack.py`), so each
    call does not cost the broker a new connection.
    """

    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log the method, the path without its query, and the status."""
        path = getattr(self, "path", "").split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


class BusyServer(ThreadedWSGIServer):
    """A thread per connection, and a listen backlog deep enough for hundreds at once."""

    # werkzeug listens with a backlog of 128: a burst of 500 connections (a benchmark with
    # 500 ms of latency on every Gmail call) would see SYNs dropped and retried a second later.
    request_queue_size = 1024


def build_server(
    app: Flask, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> BaseWSGIServer:
    """Return a threaded werkzeug server, so a hanging call never blocks the controls."""
    return BusyServer(host, port, app, QuietQueryHandler, ssl_context=ssl_context)


def base_url(host: str, port: int, tls: bool = False) -> str:
    """Return the http(s) URL of a host and port."""
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def serve_in_thread(
    app: Flask, host: str = "127.0.0.1", port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[str, Callable[[], None]]:
    """Start serving `app` (over TLS when given a context); return its URL and a stopper."""
    server = build_server(app, host, port, ssl_context)
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

    return base_url(host, server.port, ssl_context is not None), stop
