"""Google over TLS: the broker trusts only its bundle's roots, a valid leaf, the right name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from broker.config import ConfigError, load_settings
from broker.emulator.pki import Issued, Pki, issue, make_pki
from broker.google.client import Google, GoogleError
from tests.plugins.emulator import ServeTls

EmulatorTls = tuple[ServeTls, list[str]]  # the plugin's server, and the paths it answered


def _google(url: str, bundle: Path) -> Google:
    return Google(load_settings({
        "GOOGLE_DISCOVERY_URL": url + "/.well-known/openid-configuration",
        "CA_BUNDLE": str(bundle), "GOOGLE_TIMEOUT": 5}, environ={}))


def _pki(folder: Path, leaf: Issued, intermediate: Issued | None, root: Issued) -> Pki:
    folder.mkdir()
    pki = Pki(folder / "root.pem", folder / "chain.pem", folder / "key.pem")
    pki.root.write_bytes(root.pem())
    pki.chain.write_bytes(leaf.pem() + (intermediate.pem() if intermediate else b""))
    pki.key.write_bytes(leaf.key_pem())
    return pki


def test_the_emulators_own_pki_is_trusted_through_the_bundle(
    tmp_path: Path, emulator_tls: EmulatorTls
) -> None:
    serve_tls, _ = emulator_tls
    pki = make_pki(tmp_path / "pki")
    url = serve_tls(pki)
    assert url.startswith("https://127.0.0.1:")
    document = _google(url, pki.root).discovery()
    assert document["issuer"].startswith("https://127.0.0.1:")
    assert make_pki(tmp_path / "pki").root.read_bytes() == pki.root.read_bytes()  # reused


def test_without_the_bundle_the_system_store_refuses_the_emulator(
    tmp_path: Path, emulator_tls: EmulatorTls
) -> None:
    serve_tls, _ = emulator_tls
    url = serve_tls(make_pki(tmp_path / "pki"))
    google = Google(load_settings({"GOOGLE_DISCOVERY_URL": url + "/.well-known/openid-"
                                   "configuration", "GOOGLE_TIMEOUT": 5}, environ={}))
    with pytest.raises(GoogleError) as refused:
        google.discovery()
    assert refused.value.error == "discovery_unavailable"


@pytest.mark.parametrize("case", ["untrusted root", "expired leaf", "wrong host name",
                                  "missing intermediate"])
def test_a_bad_peer_is_refused_before_anything_is_sent(
    tmp_path: Path, emulator_tls: EmulatorTls, case: str
) -> None:
    serve_tls, seen = emulator_tls
    now = dt.datetime.now(dt.UTC)
    root = issue("root", ca=True)
    mid = issue("intermediate", issuer=root, ca=True)
    hosts = ("localhost", "127.0.0.1")
    leaf, served_mid, trusted = issue("good", issuer=mid, hosts=hosts), mid, root
    if case == "untrusted root":
        trusted = issue("another root with the same name", ca=True)
    elif case == "expired leaf":
        leaf = issue("old", issuer=mid, hosts=hosts, not_before=now - dt.timedelta(days=9),
                     not_after=now - dt.timedelta(days=1))
    elif case == "wrong host name":
        leaf = issue("elsewhere", issuer=mid, hosts=("elsewhere.test",))
    else:
        served_mid = None
    pki = _pki(tmp_path / "served", leaf, served_mid, root)
    url = serve_tls(pki)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(trusted.pem())
    with pytest.raises(GoogleError) as refused:
        _google(url, bundle).discovery()
    assert refused.value.error == "discovery_unavailable"
    assert seen == []  # the handshake failed: no request reached the peer
    good = _pki(tmp_path / "good", issue("good", issuer=mid, hosts=hosts), mid, root)
    assert _google(serve_tls(good), good.root).discovery()["issuer"]  # the control case
    assert seen == ["/.well-known/openid-configuration"]


def test_an_unreadable_bundle_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "bundle.pem").write_text("not PEM")
    with pytest.raises(ConfigError, match="BROKER_CA_BUNDLE: cannot use CA bundle"):
        load_settings({"CA_BUNDLE": str(tmp_path / "bundle.pem")}, environ={})
