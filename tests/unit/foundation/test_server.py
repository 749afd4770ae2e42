"""Where `broker serve` may bind: loopback always, a public address only behind a proxy."""

from __future__ import annotations

import pytest

from broker.server import bind_problem


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_proxy(host: str) -> None:
    assert bind_problem(host, behind_proxy=False) is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.0.2.10", "2001:db8::1", "broker.internal"]  # noqa: S104 - the inputs refused
)
def test_public_binds_need_a_declared_buffering_proxy(host: str) -> None:
    problem = bind_problem(host, behind_proxy=False)
    assert problem is not None and host in problem and "--behind-proxy" in problem
    assert bind_problem(host, behind_proxy=True) is None
