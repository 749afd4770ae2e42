"""The header path for real: Debian's nginx terminates mutual TLS and forwards the leaf."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from flask import Flask
from werkzeug.serving import make_server

from broker.db import get_db
from broker.emulator.pki import issue
from broker.models import Tenant
from broker.tenancy import clients
from tests.integration.api.test_mtls import _client_leaf
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config
from tests.ports import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONF = """
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {folder}/chain.pem;
    ssl_certificate_key {folder}/key.pem;
    ssl_protocols TLSv1.3;
    # Any certificate is passed on: the broker verifies it against the client's own CA.
    ssl_verify_client optional_no_ca;
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
    }}
  }}
}}
"""


@pytest.fixture
def behind_nginx(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], tmp_path: Path,
) -> Iterator[tuple[World, str, Path]]:
    """Serve the broker on loopback behind nginx; yield the world, nginx's URL and its root."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is missing: .ci/test installs Debian's nginx")
    app = make_app(**broker_config(emulator, MTLS_PROXIES="127.0.0.1/32", MTLS_HEADER="nginx"))
    world = make_world(app=app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = issue("nginx root", ca=True)
    leaf = issue("127.0.0.1", issuer=root, hosts=("127.0.0.1",))
    (tmp_path / "chain.pem").write_bytes(leaf.pem())
    (tmp_path / "key.pem").write_bytes(leaf.key_pem())
    (tmp_path / "root.pem").write_bytes(root.pem())
    port = free_port()
    (tmp_path / "nginx.conf").write_text(CONF.format(folder=tmp_path, port=port,
                                                     upstream=server.server_port))
    process = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                                "-e", str(tmp_path / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/healthz", verify=str(tmp_path / "root.pem"), timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None, (tmp_path / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield world, url, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.shutdown()
        server.server_close()


def test_a_job_behind_nginx_gets_a_token_with_its_certificate(
    behind_nginx: tuple[World, str, Path]
) -> None:
    world, url, folder = behind_nginx
    ca = issue("Acme jobs CA", ca=True)
    with get_db(world.app).transaction() as session:
        tenant = session.get(Tenant, world.tenant.id)
        assert tenant is not None
        client_id = clients.create_client(
            session, tenant, name="nightly", scopes=["gmail.readonly"],
            auth=clients.ClientAuth("tls_client_auth", ca.pem().decode(), "san_dns",
                                    "nightly.acme.test"),
        ).client_id
    job = _client_leaf(ca, san=[x509.DNSName("nightly.acme.test")])
    stranger = _client_leaf(issue("Acme jobs CA", ca=True), san=[x509.DNSName(
        "nightly.acme.test")])  # the same names from another key: nginx passes it on
    for name, issued in (("job", job), ("stranger", stranger)):
        (folder / f"{name}.pem").write_bytes(issued.pem())
        (folder / f"{name}-key.pem").write_bytes(issued.key_pem())
    body = {"user": world.user.email, "client_id": client_id}
    root = str(folder / "root.pem")

    def post(name: str) -> requests.Response:
        return requests.post(url + "/api/v1/token", json=body, verify=root, timeout=20,
                             cert=(str(folder / f"{name}.pem"), str(folder / f"{name}-key.pem")))

    answer = post("job")
    assert answer.status_code == 200, answer.text
    assert post("stranger").status_code == 401
    # A forged header from the job is replaced by nginx's own (empty without a certificate).
    forged = requests.post(url + "/api/v1/token", json=body, verify=root, timeout=20,
                           headers={"X-SSL-Client-Cert": "forged"})
    assert forged.status_code == 401
