"""Fixtures of the reliability battery: a broker wired to the emulator, worlds, served brokers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.factories import make_tenant, make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import READONLY, SEND, World, broker_config, connect
from tests.ports import free_port


@pytest.fixture
def make_broker(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> Callable[..., Flask]:
    """Build brokers whose Google is the emulator."""

    def factory(**overrides: Any) -> Flask:
        return make_app(**broker_config(emulator, **overrides))

    return factory


@pytest.fixture
def broker_app(make_broker: Callable[..., Flask]) -> Flask:
    """A broker whose Google is the emulator."""
    return make_broker()


@pytest.fixture
def make_world(broker_app: Flask, emulator: EmulatorControls) -> Callable[..., World]:
    """Build a tenant with a connected user (readonly + send) and a client allowed readonly."""

    def factory(
        granted: list[str] | None = None, allowed: list[str] | None = None,
        app: Flask | None = None, users: int = 1,
    ) -> World:
        target = app or broker_app
        tenant = make_tenant(target)
        world = World(target, emulator, tenant, make_user(target, tenant), None, "", "")
        world.connection, world.refresh_token = connect(
            target, emulator, world.user, granted or [READONLY, SEND]
        )
        world.client_id, world.client_secret = world.add_client(allowed or [READONLY])
        return world

    return factory


def broker_env(app: Flask, emulator: EmulatorControls, tmp_path: Path, **settings: Any) -> dict[
    str, str
]:
    """Return the environment that makes a separate process serve `app`'s database."""
    config = broker_config(emulator, **settings)
    current = app.config["BROKER"]
    env = {
        **os.environ,
        **{f"BROKER_{k}": str(v) for k, v in config.items()},
        "BROKER_DATABASE_URL": current.database_url,
        "BROKER_INSTANCE_PATH": str(tmp_path / "served"),
        "BROKER_SECRET_KEY": "reliability",
        "BROKER_API_RATE_LIMIT": "off",
        "BROKER_LOG_LEVEL": "WARNING",
    }
    if current.MASTER_KEYS:
        env["BROKER_MASTER_KEYS"] = current.MASTER_KEYS
    else:
        env.pop("BROKER_MASTER_KEYS", None)
        env["BROKER_MASTER_KEYS_FILE"] = str(current.master_keys_file)
    return env


class ServedBroker:
    """A broker process (werkzeug, threaded) that a test may SIGKILL and start again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until /healthz answers."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.serve", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process (no clean-up of any kind runs)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[ServedBroker]:
    """Serve a broker in a subprocess for the duration of the block."""
    server = ServedBroker(env, log)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def world_ro(make_world: Callable[..., World]) -> World:
    """A connected user (readonly + send), a client allowed readonly, limits off."""
    return make_world()
