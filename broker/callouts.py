"""Outbound HTTP clients whose pooled connections stay cheap to check under gevent.

Before each request httpcore asks every idle pooled connection whether its server closed it,
with `select.poll()` and a zero timeout. Under gunicorn's gevent worker that poll is gevent's:
16-25 µs each (watchers and a hub switch) instead of about 1 µs, so a Google refresh checking
a pool of 20 idle connections a few times cost the broker 1.7 ms more CPU than the refresh
itself needed (issue 18), and a proxied Gmail call with 200 idle connections far more. The
same check with the operating system's own poll never blocks with a zero timeout, so it is
safe in a gevent worker, and it gives the same answer.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from broker.tls import client_context

USER_AGENT = {"User-Agent": "gmail-token-broker"}  # what Google sees of our own calls
SocketOption = (tuple[int, int, int] | tuple[int, int, bytes | bytearray]
                | tuple[int, int, None, int])


def _os_poll() -> Any:
    """Return the operating system's poll(), even where gevent replaced select.poll."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


def readable(sock: Any) -> bool:
    """Say whether a socket has data or end-of-file waiting (no wait, gevent or not)."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True  # as httpcore does: a gone socket reads as closed
    poller = _os_poll()()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.NetworkStream):
    """A pooled connection's stream whose idle check uses the OS's poll."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read from the connection."""
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write to the connection."""
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        """Close the connection."""
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        """Upgrade to TLS, keeping the cheap idle check."""
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        """Answer httpcore's questions; `is_readable` with the OS's poll."""
        if info == "is_readable":
            return readable(self._inner.get_extra_info("socket"))
        return self._inner.get_extra_info(info)


class CheapChecks(httpcore.NetworkBackend):
    """httpcore's backend, handing out streams with the cheap idle check."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[SocketOption] | None = None) -> httpcore.NetworkStream:
        """Connect over TCP."""
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address,
                                               socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[SocketOption] | None = None
                            ) -> httpcore.NetworkStream:
        """Connect over a Unix socket."""
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does."""
        self._inner.sleep(seconds)


def cheap_idle_checks(client: httpx.Client) -> httpx.Client:
    """Give every connection pool of `client` the cheap idle check; return the client.

    httpx offers no public way to choose its pools' network backend, so this reaches into its
    transports; `tests/unit/foundation/test_callouts.py` fails if a new httpx moves them.
    """
    transports = [client._transport, *client._mounts.values()]  # noqa: SLF001 - see above
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, CheapChecks):
            pool._network_backend = CheapChecks(backend)  # type: ignore[union-attr]
    return client


def http_client(ca_bundle: str | None, timeout: httpx.Timeout, **options: Any) -> httpx.Client:
    """Return an outbound client: TLS verified (broker.tls), no redirects, cheap idle checks."""
    return cheap_idle_checks(httpx.Client(follow_redirects=False, timeout=timeout,
                                          verify=client_context(ca_bundle), **options))
