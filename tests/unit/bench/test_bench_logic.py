"""Pure logic of the benchmark harness: COPY text, percentiles, ratios, the floor's DSN."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from bench.burst import percentile, request_bytes
from bench.copy import CopyRows, text
from bench.cpu import Reading
from bench.floor import dsn_from_env
from bench.report import ratios, table
from bench.slow import _cpu_windows, _split_rates
from broker.models import AccessToken, User


def test_copy_text_escapes_and_encodes_each_type() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID(int=1)
    assert text(None) == "\\N"
    assert text(True) == "t" and text(False) == "f"
    assert text(b"\x00\xff") == "\\\\x00ff"
    assert text(moment) == "2026-01-02T03:04:05+00:00"
    assert text(ident) == str(ident)
    assert text("a\tb\nc\\d") == "a\\tb\\nc\\\\d"
    assert text(["x", "y"], is_json=True) == '["x", "y"]'


def test_copy_rows_fill_model_defaults_and_refuse_missing_unique_columns() -> None:
    users = User.__table__
    rows = CopyRows(users, ["id", "tenant_id", "email"], {"status": "active"})  # type: ignore[arg-type]
    assert rows.columns[:3] == ["id", "tenant_id", "email"]
    line = rows.line((uuid.UUID(int=1), uuid.UUID(int=2), "a@b.test"))
    fields = line.rstrip("\n").split("\t")
    assert len(fields) == len(rows.columns)
    assert fields[rows.columns.index("status")] == "active"
    assert fields[rows.columns.index("role")] == "member"  # the model's default
    assert rows.statement.startswith("COPY users (id, tenant_id, email, ")
    with pytest.raises(ValueError, match="unique"):
        tokens = AccessToken.__table__
        CopyRows(tokens, ["connection_id", "scope_key", "token"], {})  # type: ignore[arg-type]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0
    assert percentile([3.0], 1) == 3.0


def test_burst_request_is_one_complete_http_request() -> None:
    raw = request_bytes({"path": "/api/v1/token", "host": "127.0.0.1", "port": 8080,
                         "authorization": "Basic eDp5", "body": {"user": "u0@t0.test"}})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /api/v1/token HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head


def test_ratios_compare_broker_to_floors_against_targets() -> None:
    fast = {
        "floor@32": {"rps": 1000.0, "p50_ms": 10.0, "p99_ms": 20.0},
        "broker@32": {"rps": 700.0, "p50_ms": 12.0, "p99_ms": 50.0},
        "floor@1": {"rps": 300.0, "p50_ms": 2.0, "p99_ms": 3.0},
        "broker@1": {"rps": 150.0, "p50_ms": 4.0, "p99_ms": 6.0},
    }
    by_name = {r["name"]: r for r in ratios(fast)}
    assert by_name["throughput @32 vs same-work floor"]["ratio"] == pytest.approx(0.7)
    assert by_name["throughput @32 vs same-work floor"]["met"] is True
    assert by_name["median @1 vs same-work floor"]["ratio"] == pytest.approx(2.0)
    assert by_name["p99 @32 vs same-work floor"]["met"] is False
    assert "throughput @32 vs /healthz" not in by_name  # no healthz figures given


def test_table_says_when_a_scenario_is_not_available() -> None:
    out = table({"stampede": {"available": False, "reason": "no API"},
                 "worker": {"available": False, "reason": "no worker"}})
    assert "STAMPEDE\n  not available: no API" in out
    assert "not available: no worker" in out


def test_floor_uses_the_brokers_database_with_the_plain_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/x")
    assert dsn_from_env() == "postgresql://postgres@127.0.0.1/x"



def test_keys_table_shows_both_masters_and_their_ratio() -> None:
    row = {"rounds": 2, "clients": 32, "rps": 300.0, "p50_ms": 1.0, "p99_ms": 2.0,
           "requests": 10, "errors": 0, "non_2xx": 0}
    keys = {"available": True, "file@1": row, "hsm@1": row, "file@32": row,
            "hsm@32": {**row, "rps": 270.0}, "hsm_over_file@1": 1.0, "hsm_over_file@32": 0.9}
    printed = table({"keys": keys})
    assert "KEYS" in printed and "hsm/file at 32 clients: 0.90" in printed
    assert "not available (the hsm broker refused" in table(
        {"keys": {"available": False, "reason": "the hsm broker refused a hand-out"}})


def test_cluster_windows_count_requests_in_flight_across_a_fault_as_during() -> None:
    from bench.cluster import Fault, Sample

    class Recorded:
        samples = [
            Sample(sent=9.0, done=10.5, status=502),  # in flight when the fault began
            Sample(sent=11.0, done=12.5, status=503),  # sent before the end, answered after
            Sample(sent=12.5, done=12.6, status=200),  # after
            Sample(sent=8.0, done=9.0, status=200),  # before the fault: in neither
        ]

    fault = Fault("f", start=10.0, end=12.0)
    fault.close(Recorded(), after=1.0)  # type: ignore[arg-type]  # long past: no wait
    assert (fault.requests_during, fault.errors_during) == (2, {"502": 1, "503": 1})
    assert (fault.requests_after, fault.errors_after) == (1, {})
    assert fault.recover_s == 2.5  # from the fault to the last failed answer


@pytest.mark.parametrize(("cpu", "ratio", "calls", "marks"), [
    (3.5, 1.2, 1000, ["<= 4  ok", "<= 1.5  ok", "(target 1,000)  ok"]),
    (5.0, 2.0, 998, ["<= 4  MISSED by 1.00 ms", "<= 1.5  MISSED by 0.50x",
                     "(target 1,000)  MISSED"]),
])
def test_the_refresh_section_marks_each_issue_18_target(
    cpu: float, ratio: float, calls: int, marks: list[str]
) -> None:
    result = {"available": True, "count": 1000, "clients": 32, "latency_ms": 100,
              "workers": 2, "worker_class": "gevent", "broker_cpu_ms": cpu,
              "emulator_cpu_ms": 1.6, "wall_s": ratio * 3.125, "bound_s": 3.125,
              "wall_ratio": ratio, "statuses": {"200": calls}, "upstream_calls": calls,
              "p50_ms": 1.0, "p99_ms": 2.0}
    shown = table({"refresh": result})
    for mark in marks:
        assert mark in shown


def test_the_worker_lines_give_rate_calls_and_p99_against_their_targets() -> None:
    worker = {"available": True, "refreshed": 10_000, "connections": 10_000, "seconds": 50.0,
              "processes": 2, "interval_s": 0.5, "upstream_calls": 10_000, "rate": 200.0,
              "upstream_latency_ms": 200, "handout_p99_ms": 100.0,
              "handout_p99_busy_ms": 140.0, "worker_cpu_ms": 3.0, "emulator_cpu_ms": 1.2}
    lines = table({"worker": worker}).splitlines()
    assert any("200 refreshes/s" in line and "MISSED by 100/s" in line for line in lines)
    assert any("upstream calls 10,000 for 10,000" in line and line.endswith("ok")
               for line in lines)
    assert any("1.40x  target <= 1.5  ok" in line for line in lines)
    assert not any("users refreshed twice" in line for line in lines)  # an older result
    assert not any("while the hand-out load ran" in line for line in lines)


def test_the_worker_lines_split_the_rate_around_the_handout_load() -> None:
    worker = {"available": True, "refreshed": 10_000, "connections": 10_000, "seconds": 40.0,
              "processes": 2, "interval_s": 0.5, "upstream_calls": 10_000, "rate": 250.0,
              "upstream_latency_ms": 200, "handout_p99_ms": 100.0,
              "handout_p99_busy_ms": 140.0, "worker_cpu_ms": 3.0, "emulator_cpu_ms": 1.2,
              **_split_rates(10_000, 40.0, {"refreshed": 1_500.0, "seconds": 15.0}),
              }
    assert "    of which 100/s while the hand-out load ran, 340/s the rest of the run" in (
        table({"worker": worker}).splitlines())
    assert _split_rates(10_000, 40.0, {}) == {}  # no probe: no split


def test_the_worker_lines_say_what_google_took_and_flag_a_second_refresh() -> None:
    worker = {"available": True, "refreshed": 10_000, "connections": 10_000, "seconds": 50.0,
              "processes": 2, "interval_s": 0.5, "upstream_calls": 10_001, "rate": 200.0,
              "upstream_latency_ms": 200, "handout_p99_ms": 100.0,
              "handout_p99_busy_ms": 140.0, "worker_cpu_ms": 3.0, "emulator_cpu_ms": 1.2,
              "google_p50_ms": 231.4, "google_p90_ms": 297.0, "refreshed_twice": 1}
    lines = table({"worker": worker}).splitlines()
    assert ("  Google's latency as the workers saw it: p50 231 ms, p90 297 ms (the emulator "
            "waits 200 ms); users refreshed twice 1  MISSED") in lines


def _at(at: float, **groups: float) -> Reading:
    return Reading(at, groups)


def _cpu_table(cpu: dict[str, Any]) -> list[str]:
    """Return the table's lines for a worker result carrying these CPU windows."""
    worker = {"available": True, "refreshed": 1, "connections": 1, "seconds": 1.0,
              "processes": 2, "interval_s": 0.5, "upstream_calls": 1, "rate": 300.0,
              "upstream_latency_ms": 200, "handout_p99_ms": 0.0, "handout_p99_busy_ms": 0.0,
              "cpu": cpu}
    return table({"worker": worker}).splitlines()


def test_the_cpu_windows_split_the_run_around_the_handout_load() -> None:
    quiet = _at(0.0, handout=0.0, postgres=0.0), _at(5.0, handout=7.0, postgres=2.0)
    readings = {  # workers alone 10 s, beside the hand-out 15 s, alone again 5 s
        "started": _at(10.0, workers=0.0, emulator=0.0, postgres=10.0),
        "began": _at(20.0, workers=9.0, emulator=3.0, postgres=14.0),
        "ended": _at(35.0, workers=15.0, emulator=6.0, postgres=20.0),
        "done": _at(40.0, workers=21.0, emulator=7.5, postgres=22.0),
    }
    cpu = _cpu_windows(*quiet, readings, refreshed_alone=4_500)
    assert cpu["handout_alone"] == {"handout": 1.4, "postgres": 0.4}
    assert cpu["beside"] == {"workers": 0.4, "emulator": 0.2, "postgres": 0.4}
    # Alone: (9 + 6) s of workers' CPU over 15 s; per refresh, over the 4,500 done then.
    assert cpu["workers_alone"] == pytest.approx({"workers": 1.0, "emulator": 0.3,
                                                  "postgres": 0.4})
    assert cpu["ms_per_refresh_alone"] == pytest.approx({
        "workers": 15_000 / 4_500, "emulator": 4_500 / 4_500, "postgres": 6_000 / 4_500})
    cpu["cores"] = 2  # this machine's count, whatever runs the test
    lines = _cpu_table(cpu)
    beside = "    hand-out load beside workers:  workers 0.40, emulator 0.20, PostgreSQL 0.40"
    assert beside in lines
    # 5.67 ms of the three per refresh: 300/s of it is 1.70 cores.
    assert any(line.endswith("300/s takes 1.70 of 2 cores") for line in lines)


def test_the_cpu_windows_give_no_split_when_the_handout_load_outlasts_the_workers() -> None:
    quiet = _at(0.0, handout=0.0), _at(5.0, handout=5.0)
    readings = {"started": _at(10.0, workers=0.0), "began": _at(12.0, workers=2.0),
                "done": _at(15.0, workers=5.0), "ended": _at(27.0, workers=5.0)}
    cpu = _cpu_windows(*quiet, readings, refreshed_alone=0)
    assert set(cpu) == {"cores", "handout_alone"}
    alone = _cpu_windows(*quiet, {"started": readings["started"], "done": readings["done"]},
                         refreshed_alone=1_000)
    assert alone["workers_alone"] == {"workers": 1.0}
    # No PostgreSQL group (a server on another machine): the line says what it leaves out.
    assert alone["ms_per_refresh_alone"] == {"workers": 5.0}
    alone["cores"] = 2
    assert ("  per refresh, workers alone: workers 5.00 ms: 300/s takes 1.50 of 2 cores"
            " (PostgreSQL on another machine)") in _cpu_table(alone)
