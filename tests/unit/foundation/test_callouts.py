"""Outbound clients keep their pooled connections, and find out cheaply when a server closed one."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from broker.callouts import USER_AGENT, CheapChecks, cheap_idle_checks, http_client, readable
from tests.ports import free_port


class _KeepAlive(BaseHTTPRequestHandler):
    """Answer every GET on a kept-alive HTTP/1.1 connection; count the connections."""

    protocol_version = "HTTP/1.1"
    connections: list[socket.socket] = []

    def setup(self) -> None:
        super().setup()
        self.connections.append(self.connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        """Stay quiet."""


@pytest.fixture
def server() -> Iterator[tuple[str, list[socket.socket]]]:
    handler: Any = type("Handler", (_KeepAlive,), {"connections": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", handler.connections
    httpd.shutdown()
    httpd.server_close()


def test_readable_tells_an_idle_socket_from_a_closed_or_written_one() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert readable(ours) is False
        theirs.sendall(b"x")
        assert readable(ours) is True
        ours.recv(1)
        assert readable(ours) is False
        theirs.close()
        assert readable(ours) is True  # end of file waits: the server closed it


def test_every_pool_of_the_client_gets_the_cheap_check() -> None:
    # Reaches into httpx as cheap_idle_checks does: fails if a new httpx moves its pools.
    client = cheap_idle_checks(httpx.Client(mounts={"http://other.test": httpx.HTTPTransport()}))
    with client:
        transports: list[Any] = [client._transport, *client._mounts.values()]
        pools = [t._pool for t in transports]
        assert len(pools) == 2 and all(isinstance(p._network_backend, CheapChecks) for p in pools)
        cheap_idle_checks(client)  # twice: not wrapped twice
        assert not isinstance(pools[0]._network_backend._inner, CheapChecks)


def test_a_kept_connection_is_reused_and_a_closed_one_replaced(
    server: tuple[str, list[socket.socket]],
) -> None:
    url, connections = server
    with cheap_idle_checks(httpx.Client()) as client:
        assert [client.get(url).text for _ in range(3)] == ["ok"] * 3
        assert len(connections) == 1  # one connection kept alive for all three
        connections[0].shutdown(socket.SHUT_RDWR)  # the server drops the idle connection
        assert client.get(url).text == "ok"  # seen as closed before use: a new one, no error
        assert len(connections) == 2


def test_under_gevent_the_check_uses_the_operating_system_s_poll() -> None:
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import select, socket\n"
        "from broker.callouts import _os_poll, readable\n"
        "assert select.poll is not monkey.get_original('select', 'poll')\n"
        "assert _os_poll() is monkey.get_original('select', 'poll')\n"
        "a, b = socket.socketpair()\n"
        "assert not readable(a)\n"
        "b.close()\n"
        "assert readable(a)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_every_outbound_client_is_made_the_same_way() -> None:
    with http_client(None, httpx.Timeout(2.0), headers=USER_AGENT) as client:
        transport: Any = client._transport
        assert isinstance(transport._pool._network_backend, CheapChecks)
        assert client.follow_redirects is False
        assert client.headers["User-Agent"] == "gmail-token-broker"
