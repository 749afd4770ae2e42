"""The long crash-consistency run: the reliability battery's SIGKILL test, with many rounds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.run import Run

ROUNDS, QUICK_ROUNDS = 60, 10
TEST = "tests/reliability/test_crash.py"


def crash(run: Run) -> dict[str, Any]:
    """Kill a serving broker at random points during refreshes, many times; report the line."""
    root = Path(__file__).resolve().parent.parent
    if not (root / TEST).exists():
        return {"available": False, "reason": f"{TEST} is not in this checkout"}
    rounds = QUICK_ROUNDS if run.options.quick else ROUNDS
    run.log(f"crash: {rounds} kill rounds (pytest {TEST})")
    env = {**os.environ, "BROKER_CRASH_ROUNDS": str(rounds),
           "BROKER_TEST_DATABASE_URL": run.stack.postgres.url("postgres")}
    done = subprocess.run(  # noqa: S603 - our own test suite
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST],
        cwd=root, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    lines = done.stdout.splitlines()
    summary = next((line for line in lines if line.startswith("crash: ") and "kills" in line),
                   "")
    seed = next((line for line in lines if "BROKER_CRASH_SEED=" in line), "")
    out = {"available": True, "rounds": rounds, "passed": done.returncode == 0,
           "summary": summary.removeprefix("crash: "), "seed": seed.removeprefix("crash: ")}
    if done.returncode != 0:
        out["tail"] = "\n".join(lines[-15:])
    run.log("  " + (out["summary"] or "no summary line") + ("" if out["passed"] else "  FAILED"))
    return out
