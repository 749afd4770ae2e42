"""Key services on this machine: a SoftHSM2 token in a tmp folder, moto's KMS on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
HSM_PIN = "246810"


@dataclass
class SoftHsm:
    """A SoftHSM2 token initialised for this test run, in its own token folder."""

    module: str
    token: str
    pin: str
    tokens: Path

    def reference(self, label: str) -> str:
        """Return the `pkcs11:` reference of a key label on this token."""
        return f"pkcs11:module={self.module};token={self.token};key={label}"

    def new_key(self) -> str:
        """Create a fresh AES key on the token; return its reference."""
        from broker.keys import init_hsm_key

        label = "mk-" + uuid.uuid4().hex[:8]
        init_hsm_key(self.module, self.token, label, self.pin)
        return self.reference(label)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Initialise a token in a tmp folder; SOFTHSM2_CONF points there for this process."""
    if not Path(SOFTHSM_MODULE).exists() or not shutil.which("softhsm2-util"):
        pytest.fail("SoftHSM2 is missing: run .ci/test (it installs Debian's softhsm2)")
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n", encoding="utf-8")
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "broker-test",
         "--so-pin", "13579", "--pin", HSM_PIN],
        check=True, capture_output=True, env={**os.environ},
    )
    yield SoftHsm(SOFTHSM_MODULE, "broker-test", HSM_PIN, tokens)
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


class Moto:
    """moto's server on a loopback port: KMS over real HTTP, stopped and started by tests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: Any = None
        self.serving = False

    def start(self) -> None:
        """Serve on the port (the KMS keys made before a stop are still there)."""
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.serving = True

    def stop(self) -> None:
        """Stop answering and close the socket: connections are refused until start()."""
        self._server.stop()
        self._server._server.server_close()  # stop() alone leaves the socket listening
        self.serving = False

    def new_key(self) -> str:
        """Create a KMS key with a fresh alias; return its `awskms:` reference."""
        import boto3

        kms = boto3.session.Session().client("kms")
        key_id = kms.create_key(Description="broker test master")["KeyMetadata"]["KeyId"]
        alias = "alias/broker-" + uuid.uuid4().hex[:8]
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        return "awskms:" + alias


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    """Start moto's server; point boto3 at it with dummy credentials for this process."""
    server = Moto(free_port())
    server.start()
    saved = {k: os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update({
        "AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    })
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()
