"""`python -m bench all|fastpath|size|stampede|worker|overview|mtls|profile|proxy|crash|keys|
cluster`.

`all` runs every scenario but `crash`, the long crash-consistency run, `keys` (file vs HSM
master, it needs SoftHSM2) and `cluster` (nginx, replicas, workers, failover: faults one at a
time), which are asked for alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

from bench import mtls, overview, report, run, slow
from bench.load import ensure_wrk
from bench.stack import Stack, interrupts_as_exceptions

SCENARIOS: dict[str, Callable[[run.Run], dict[str, Any]]] = {
    "fastpath": run.fastpath,
    "size": run.size,
    "stampede": slow.stampede,
    "worker": slow.worker,
    "overview": overview.overview,
    "mtls": mtls.mtls,
}


def _crash(r: run.Run) -> dict[str, Any]:
    from bench.crash import crash

    return crash(r)


def _profile(r: run.Run) -> dict[str, Any]:
    from bench.profile import profile

    return profile(r)


def _proxy(r: run.Run) -> dict[str, Any]:
    from bench.proxy import proxy

    return proxy(r)


def _refresh(r: run.Run) -> dict[str, Any]:
    from bench.refresh import refresh

    return refresh(r)


def _keys(r: run.Run) -> dict[str, Any]:
    from bench.keys import keys

    return keys(r)


def _cluster(r: run.Run) -> dict[str, Any]:
    from bench.cluster import cluster

    return cluster(r)


def parse(argv: list[str]) -> tuple[list[str], run.Options]:
    """Read the scenario names and options."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="+",
                        choices=["all", *SCENARIOS, "profile", "crash", "keys", "proxy",
                                 "cluster", "refresh"],
                        metavar="SCENARIO",
                        help="all, fastpath, size, stampede, worker, overview, mtls, profile, "
                             "proxy, refresh, crash, keys or cluster")
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one round, big N of 100,000 (for development)")
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (medians are reported)")
    parser.add_argument("--big-n", type=int, help="connections in the size scenario's big set")
    parser.add_argument("--workers", type=int, default=0, help="gunicorn workers (all servers)")
    parser.add_argument("--threads", type=int, default=0, help="gunicorn threads per worker")
    parser.add_argument("--worker-class", choices=["gevent", "gthread"], default="",
                        help="gunicorn worker class (default: what `broker serve` picks)")
    parser.add_argument("--worker-nice", type=int, default=0, choices=range(20), metavar="N",
                        help="run the worker scenario's `broker worker` with --nice N")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    options = run.Options(quick=args.quick, workers=args.workers, threads=args.threads,
                          keep=args.keep, worker_class=args.worker_class,
                          worker_nice=args.worker_nice)
    if args.quick:
        options.duration, options.warmup, options.rounds, options.big_n = 5.0, 1.0, 1, 100_000
    options.duration = args.duration or options.duration
    options.rounds = args.rounds or options.rounds
    options.big_n = args.big_n or options.big_n
    names = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    if "all" in args.scenarios:
        names += ["refresh", "profile", "proxy", *(n for n in args.scenarios if n == "crash")]
    return list(dict.fromkeys(names)), options


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios asked for, print the table and write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    names, options = parse(argv)
    try:
        ensure_wrk()
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    stack = Stack(keep_workdir=options.keep)
    current = run.Run(options, stack)
    status = 0
    with interrupts_as_exceptions():
        try:
            current.log(f"PostgreSQL at {stack.start_postgres()}")
            stale = stack.postgres.drop_stale()
            if stale:
                current.log(f"dropped databases of dead runs: {', '.join(stale)}")
            for name in names:
                extra = {"profile": _profile, "crash": _crash, "keys": _keys,
                         "proxy": _proxy, "cluster": _cluster, "refresh": _refresh}
                scenario = extra.get(name) or SCENARIOS[name]
                current.results[name] = scenario(current)
            current.results["memory"] = run.rss(current)
        except KeyboardInterrupt:
            current.log("interrupted: stopping processes and dropping databases")
            status = 130
        except Exception as exc:  # noqa: BLE001 - report what we have, then fail
            current.log(f"failed: {type(exc).__name__}: {exc}")
            status = 1
        finally:
            stack.close()
            if options.keep:
                current.log(f"logs kept in {stack.workdir}")
    command = "python -m bench " + shlex.join(argv)
    print()
    print(f"$ {command}")
    print(report.table(current.results))
    if current.results:
        print(f"\nwritten {report.write(current.results, command)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
