"""Token fetches over mutual TLS against Basic over the same TLS listener; a handshake's cost."""

from __future__ import annotations

import multiprocessing
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from bench import data
from bench.load import basic
from bench.run import Run
from bench.stack import HOST, free_port
from broker.db import Database
from broker.emulator.pki import issue
from broker.models import Tenant
from broker.server import MtlsListener, mtls_argv
from broker.tenancy import clients

CLIENTS = 4  # load processes (each one keep-alive connection, requests back to back)
SEQUENTIAL = 200  # requests for the handshake figure


def _pki(folder: Path) -> dict[str, str]:
    root = issue("bench server root", ca=True)
    leaf = issue(HOST, issuer=root, hosts=(HOST,))
    job_ca = issue("bench jobs CA", ca=True)
    job = issue("bench-job", issuer=job_ca, hosts=("job.bench.test",), client=True)
    files = {"root": root.pem(), "chain": leaf.pem(), "key": leaf.key_pem(),
             "job_ca": job_ca.pem(), "job": job.pem(), "job_key": job.key_pem()}
    out = {}
    for name, pem in files.items():
        (folder / f"{name}.pem").write_bytes(pem)
        out[name] = str(folder / f"{name}.pem")
    return out


def _job_client(url: str, tenant: data.TenantInfo, ca_pem: str) -> str:
    database = Database(url)
    try:
        with database.transaction() as session:
            row = session.get(Tenant, tenant.id)
            assert row is not None
            return clients.create_client(
                session, row, name="bench-mtls", scopes=data.SCOPES,
                auth=clients.ClientAuth("tls_client_auth", ca_pem, "san_dns", "job.bench.test"),
            ).client_id
    finally:
        database.dispose()


def _context(files: dict[str, str], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["root"])
    if with_cert:
        context.load_cert_chain(files["job"], files["job_key"])
    return context


def _worker(args: tuple[str, dict[str, str], bool, dict[str, str], dict[str, Any], float]
            ) -> tuple[int, list[float]]:
    url, files, with_cert, headers, body, seconds = args
    done, latencies = 0, []
    with httpx.Client(verify=_context(files, with_cert), timeout=10) as client:
        client.post(url, json=body, headers=headers)  # connect outside the measurement
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            answer = client.post(url, json=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
            done += 1
    return done, latencies


def _measure(pool: Any, url: str, files: dict[str, str], with_cert: bool,
             headers: dict[str, str], body: dict[str, Any], seconds: float) -> dict[str, float]:
    results = pool.map(_worker, [(url, files, with_cert, headers, body, seconds)] * CLIENTS)
    latencies = sorted(x for _, lat in results for x in lat)
    count = sum(n for n, _ in results)
    return {"rps": count / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def _sequential(url: str, files: dict[str, str], body: dict[str, Any], fresh: bool) -> float:
    """Return the median latency of one mTLS fetch: on a new connection each, or kept alive."""
    spent = []
    kept = httpx.Client(verify=_context(files, True), timeout=10)
    try:
        for _ in range(SEQUENTIAL):
            start = time.perf_counter()
            if fresh:
                with httpx.Client(verify=_context(files, True), timeout=10) as client:
                    client.post(url, json=body).raise_for_status()
            else:
                kept.post(url, json=body).raise_for_status()
            spent.append(time.perf_counter() - start)
    finally:
        kept.close()
    return statistics.median(spent) * 1000


def mtls(run: Run) -> dict[str, Any]:
    """Serve the mTLS listener on the small data set; compare mTLS with Basic over it."""
    small = run.ensure_small()
    tenant = small.tenants[0]
    folder = Path(tempfile.mkdtemp(prefix="mtls-", dir=run.stack.workdir))
    files = _pki(folder)
    client_id = _job_client(small.url, tenant, Path(files["job_ca"]).read_text())
    port = free_port()
    env = run.stack.broker_env(small.name, run.emulator())
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-",
                                                       dir=run.stack.workdir)
    listener = MtlsListener(port, files["chain"], files["key"])
    argv = mtls_argv(HOST, listener, run.options.workers, run.options.threads)
    proc = run.stack.spawn("broker-mtls", argv, env, f"https://{HOST}:{port}")
    url = proc.url + "/api/v1/token"
    deadline = time.monotonic() + 30
    while True:  # the TLS listener up: its CA list is read when the first handshake comes
        try:
            httpx.get(proc.url + "/healthz", verify=_context(files, False), timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mTLS listener did not start:\n{proc.log_tail()}") from None
            time.sleep(0.2)
    user = data.email(small.tenants, 0)
    seconds = 3.0 if run.options.quick else run.options.duration
    basic_headers = {"Authorization": basic(tenant.client_id, tenant.client_secret)}
    rounds: dict[str, list[dict[str, float]]] = {"basic": [], "mtls": []}
    with multiprocessing.get_context("spawn").Pool(CLIENTS) as pool:
        for _ in range(run.options.rounds):  # interleaved, medians reported
            rounds["basic"].append(_measure(pool, url, files, False, basic_headers,
                                            {"user": user, "scopes": ["gmail.readonly"]},
                                            seconds))
            rounds["mtls"].append(_measure(pool, url, files, True, {}, {
                "user": user, "scopes": ["gmail.readonly"], "client_id": client_id}, seconds))
    body = {"user": user, "client_id": client_id}
    kept, fresh = _sequential(url, files, body, False), _sequential(url, files, body, True)
    result: dict[str, Any] = {
        name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for name, rows in rounds.items()
    }
    result.update(ratio=result["mtls"]["rps"] / result["basic"]["rps"], keepalive_ms=kept,
                  fresh_ms=fresh, handshake_ms=fresh - kept, clients=CLIENTS,
                  seconds=seconds, leaf=x509.load_pem_x509_certificate(
                      Path(files["job"]).read_bytes()).subject.rfc4514_string())
    run.stack.retire(proc)
    run.log(f"  mtls: {result['mtls']['rps']:.0f} req/s vs basic over the same TLS "
            f"{result['basic']['rps']:.0f} req/s (ratio {result['ratio']:.2f}); one fetch "
            f"{kept:.2f} ms kept alive, {fresh:.2f} ms on a new connection")
    return result
