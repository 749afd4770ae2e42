"""Where `broker serve` may bind: loopback always, a public address only behind a proxy."""

from __future__ import annotations

import pytest

from broker.server import bind_problem, default_worker_class, gunicorn_argv, sensible_workers


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


def test_postgres_serves_with_gevent_workers_and_sqlite_with_threads() -> None:
    assert default_worker_class(sqlite=False) == "gevent"
    assert default_worker_class(sqlite=True) == "gthread"
    workers, greenlets = sensible_workers(False, None, None, "gevent")
    assert workers >= 2 and greenlets == 1000
    argv = gunicorn_argv("127.0.0.1", 8080, workers, greenlets, "gevent")
    assert argv[argv.index("--worker-class") + 1] == "gevent"
    assert argv[argv.index("--worker-connections") + 1] == "1000" and "--threads" not in argv
    assert "--threads" in gunicorn_argv("127.0.0.1", 8080, 2, 4, "gthread")
