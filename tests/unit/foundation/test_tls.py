"""Chain files checked as a server must send them, and the one context callouts verify with."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker.emulator.pki import Issued, issue
from broker.tls import TlsConfigError, check_chain, client_context


def now() -> dt.datetime:
    """Return the time now: certificates are issued as of when a test runs, not imports."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    root = issue("root", ca=True)
    mid = issue("intermediate", issuer=root, ca=True)
    return {"root": root, "mid": mid, "leaf": issue("broker.test", issuer=mid,
                                                   hosts=("broker.test",))}


def _problems(pem: bytes, key: bytes | None = None) -> list[str]:
    return check_chain(pem, now(), key).problems


def test_a_chain_in_order_without_its_root_passes(pki: dict[str, Issued]) -> None:
    report = check_chain(pki["leaf"].pem() + pki["mid"].pem(), now(), pki["leaf"].key_pem())
    assert report.ok and len(report.certificates) == 2


def test_the_wrong_order_is_named(pki: dict[str, Issued]) -> None:
    problems = _problems(pki["mid"].pem() + pki["leaf"].pem())
    assert any("first certificate is a CA" in p for p in problems)
    assert any("certificate 1 is not signed by certificate 2" in p for p in problems)


def test_a_root_at_the_end_is_named(pki: dict[str, Issued]) -> None:
    problems = _problems(pki["leaf"].pem() + pki["mid"].pem() + pki["root"].pem())
    assert len(problems) == 1 and "self-signed root: remove it" in problems[0]


def test_a_missing_intermediate_breaks_the_chain(pki: dict[str, Issued]) -> None:
    problems = _problems(pki["leaf"].pem() + pki["root"].pem())
    assert any("certificate 1 is not signed by certificate 2" in p for p in problems)


def test_validity_is_checked_both_ways(pki: dict[str, Issued]) -> None:
    old = issue("old.test", issuer=pki["mid"], hosts=("old.test",),
                not_before=now() - dt.timedelta(days=60), not_after=now() - dt.timedelta(days=1))
    early = issue("early.test", issuer=pki["mid"], hosts=("early.test",),
                  not_before=now() + dt.timedelta(days=1))
    assert any("has expired" in p for p in _problems(old.pem() + pki["mid"].pem()))
    assert any("is not valid before" in p for p in _problems(early.pem() + pki["mid"].pem()))


def test_a_key_of_another_certificate_is_named(pki: dict[str, Issued]) -> None:
    problems = _problems(pki["leaf"].pem() + pki["mid"].pem(), pki["mid"].key_pem())
    assert problems == [p for p in problems if "key does not match" in p] and problems
    assert any("no readable private key" in p
               for p in _problems(pki["leaf"].pem(), b"-----BEGIN PRIVATE KEY-----\nxx\n"))


def test_a_file_without_certificates_is_refused() -> None:
    with pytest.raises(TlsConfigError, match="no PEM certificate"):
        check_chain(b"not a certificate", now())


def test_callouts_verify_names_and_chains_with_tls12_or_newer(
    tmp_path: Path, pki: dict[str, Issued]
) -> None:
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(pki["root"].pem())
    context = client_context(str(bundle))
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # only the bundle: no system roots beside it
    assert all("GCM" in c["name"] or "CHACHA20" in c["name"] for c in context.get_ciphers())
    assert client_context(str(bundle)) is context  # built once per bundle
    with pytest.raises(TlsConfigError, match="cannot use CA bundle"):
        client_context(str(tmp_path / "missing.pem"))


def test_threads_asking_at_once_share_one_context(tmp_path: Path, pki: dict[str, Issued]) -> None:
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(pki["root"].pem())
    start = threading.Barrier(16)

    def first_call() -> ssl.SSLContext:
        start.wait()
        return client_context(str(bundle))

    with ThreadPoolExecutor(16) as pool:
        contexts = list(pool.map(lambda _: first_call(), range(16)))
    assert len({id(context) for context in contexts}) == 1  # the store was loaded once
