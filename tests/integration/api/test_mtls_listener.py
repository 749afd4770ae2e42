"""`broker serve --mtls-port`: a real gunicorn terminating TLS 1.3 with the job's certificate."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from broker.client import BrokerClient
from broker.db import get_db
from broker.emulator.pki import issue
from broker.models import AuditEvent, Tenant
from broker.tenancy import clients
from tests.conftest import MASTER_KEYS
from tests.integration.api.test_mtls import _client_leaf
from tests.plugins.world import World, basic, broker_config
from tests.ports import free_port


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """Files of a server chain for 127.0.0.1 and of a job's certificate from the tenant's CA."""
    root = issue("server root", ca=True)
    mid = issue("server intermediate", issuer=root, ca=True)
    leaf = issue("127.0.0.1", issuer=mid, hosts=("127.0.0.1", "localhost"))
    job_ca = issue("Acme jobs CA", ca=True)
    job = _client_leaf(job_ca, san=[x509.UniformResourceIdentifier("spiffe://acme/nightly")])
    files = {"root": root.pem(), "chain": leaf.pem() + mid.pem(), "key": leaf.key_pem(),
             "job_ca": job_ca.pem(), "job": job.pem(), "job_key": job.key_pem()}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.pem"
        out[name].write_bytes(data)
    return out


@pytest.fixture
def job_client(world: World, pki: dict[str, Path]) -> str:
    """A client of the world's tenant that authenticates with a certificate of its CA."""
    ca_pem = pki["job_ca"].read_text()
    with get_db(world.app).transaction() as session:
        tenant = session.get(Tenant, world.tenant.id)
        assert tenant is not None
        return clients.create_client(
            session, tenant, name="nightly", scopes=["gmail.readonly"],
            auth=clients.ClientAuth("tls_client_auth", ca_pem, "san_uri", "spiffe://acme/nightly"),
        ).client_id


@pytest.fixture
def serving(
    world: World, pki: dict[str, Path], job_client: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Run `broker serve --mtls-port` on this test's database; yield both base URLs.

    The job's CA is registered first: a worker re-reads client CAs every 30 seconds.
    """
    port, mtls_port = free_port(), free_port()
    env = {
        **os.environ,
        **{f"BROKER_{k}": str(v) for k, v in broker_config(world.emulator).items()},
        "BROKER_DATABASE_URL": world.app.config["BROKER"].database_url,
        "BROKER_MASTER_KEYS": MASTER_KEYS, "BROKER_INSTANCE_PATH": str(tmp_path / "served"),
        "BROKER_SECRET_KEY": "mtls", "BROKER_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", "from broker.cli import main; main()", "serve", "--port",
         str(port), "--mtls-port", str(mtls_port), "--workers", "1", "--threads", "4",
         "--tls-cert", str(pki["chain"]), "--tls-key", str(pki["key"])],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    plain, secure = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{mtls_port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                trusted = ssl.create_default_context(cafile=str(pki["root"]))
                if (httpx.get(plain + "/healthz", timeout=1).status_code == 200 and httpx.get(
                        secure + "/healthz", timeout=1, verify=trusted).status_code == 200):
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        yield plain, secure
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_a_job_gets_a_token_with_its_certificate_and_no_secret(
    world: World, pki: dict[str, Path], job_client: str, serving: tuple[str, str]
) -> None:
    plain, secure = serving
    client_id = job_client
    body = {"user": world.user.email, "client_id": client_id}
    answer = requests.post(secure + "/api/v1/token", json=body, verify=str(pki["root"]),
                           cert=(str(pki["job"]), str(pki["job_key"])), timeout=20)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scopes"] == ["https://www.googleapis.com/auth/gmail.readonly"]
    with get_db(world.app).transaction(write=False) as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "token.handout", AuditEvent.actor_id == client_id)).one()
    assert event.details["cert_via"] == "tls" and len(event.details["cert_sha256"]) == 64
    # No certificate: the same listener answers a plain invalid_client.
    bare = requests.post(secure + "/api/v1/token", json=body, verify=str(pki["root"]),
                         timeout=20)
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
    # The SDK does the same with a certificate instead of a secret.
    sdk = BrokerClient(secure, client_id, cert=(str(pki["job"]), str(pki["job_key"])),
                       verify=str(pki["root"]))
    try:
        assert sdk.token(world.user.email).email == world.user.email
    finally:
        sdk.http.close()
    with pytest.raises(ValueError, match="exactly one"):
        BrokerClient(secure, client_id, "secret", cert=(str(pki["job"]), str(pki["job_key"])))
    # The usual listener still serves secret clients, and never asks for a certificate.
    usual = httpx.post(plain + "/api/v1/token", json={"user": world.user.email},
                       headers={"Authorization": basic(world.client_id, world.client_secret)})
    assert usual.status_code == 200, usual.text


def test_the_listener_speaks_tls_13_only(pki: dict[str, Path], serving: tuple[str, str]) -> None:
    _, secure = serving
    old = ssl.create_default_context(cafile=str(pki["root"]))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(secure + "/healthz", verify=old, timeout=5)


def test_a_wrong_chain_order_stops_start_up(pki: dict[str, Path], tmp_path: Path) -> None:
    backwards = tmp_path / "backwards.pem"
    chain = x509.load_pem_x509_certificates(pki["chain"].read_bytes())
    backwards.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in reversed(chain)))
    answer = subprocess.run(
        [sys.executable, "-c", "from broker.cli import main; main()", "serve", "--mtls-port",
         str(free_port()), "--tls-cert", str(backwards), "--tls-key", str(pki["key"])],
        env={**os.environ, "BROKER_INSTANCE_PATH": str(tmp_path / "i"),
             "BROKER_MASTER_KEYS": MASTER_KEYS, "BROKER_SECRET_KEY": "x"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert answer.returncode == 1
    assert "put the leaf first" in answer.stderr and "Traceback" not in answer.stderr
