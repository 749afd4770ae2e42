"""The built wheel carries templates and migrations and runs outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.postgres_only
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # Dependencies come from the test environment; the broker itself only from the wheel.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env["BROKER_INSTANCE_PATH"] = str(tmp_path / "instance")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import broker, pathlib; p = pathlib.Path(broker.__file__).parent; "
         "print(p); print((p / 'templates').is_dir()); "
         "print(any((p / 'migrations' / 'versions').glob('*.py')))"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    ).stdout.split()
    assert where[0].startswith(str(venv)) and where[1:] == ["True", "True"]
    for args in (["--help"], ["init"]):
        result = subprocess.run(
            [str(venv / "bin" / "broker"), *args], capture_output=True, text=True,
            cwd=tmp_path, env=env, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "instance" / "broker.db").exists()
    assert (tmp_path / "instance" / "master.keys").stat().st_mode & 0o777 == 0o600
