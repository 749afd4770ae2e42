"""Keyring entries that name remote masters: parsing, ids, PINs (no key service is asked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.keys.awskms import encryption_context
from broker.keys.awskms import parse_reference as parse_kms
from broker.keys.pkcs11 import parse_reference as parse_pkcs11
from broker.keys.pkcs11 import read_pin
from broker.keys.sealed import (
    EnvKeyProvider,
    KeySourceError,
    RemoteOptions,
    entry_id,
    format_key_line,
    new_key,
)

HSM = "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=broker;key=master-1"


def test_pkcs11_reference_fields_and_id() -> None:
    assert parse_pkcs11(HSM) == {"module": "/usr/lib/softhsm/libsofthsm2.so",
                                 "token": "broker", "key": "master-1", "id": "master-1"}
    assert parse_pkcs11(HSM + ";id=hsm-2")["id"] == "hsm-2"
    assert entry_id(HSM) == "master-1"


@pytest.mark.parametrize("reference, message", [
    ("pkcs11:module=/x.so;token=t", "missing key="),
    ("pkcs11:module=/x.so;token=t;key=k;pin=1234", "is not module="),
    ("pkcs11:module=/x.so;token=t;key=bad label", "key id"),
    ("pkcs11:module=/x.so;token;key=k", "is not module="),
])
def test_pkcs11_reference_refusals_name_the_problem(reference: str, message: str) -> None:
    with pytest.raises(KeySourceError, match=message) as raised:
        parse_pkcs11(reference)
    assert "1234" not in str(raised.value)


@pytest.mark.parametrize("reference, key, key_id", [
    ("awskms:alias/broker", "alias/broker", "kms.broker"),
    ("awskms:alias/team/broker", "alias/team/broker", "kms.team.broker"),
    ("awskms:1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ab",
     "kms.1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("awskms:arn:aws:kms:us-east-1:111122223333:key/1234abcd",
     "arn:aws:kms:us-east-1:111122223333:key/1234abcd", "kms.1234abcd"),
    ("awskms:alias/broker;id=kms-main", "alias/broker", "kms-main"),
])
def test_kms_reference_key_and_id(reference: str, key: str, key_id: str) -> None:
    assert parse_kms(reference) == (key, key_id)


@pytest.mark.parametrize("reference", [
    "awskms:", "awskms:alias/", "awskms:not a key", "awskms:alias/x;region=eu",
    "awskms:alias/x;id=a b",
])
def test_kms_reference_refusals(reference: str) -> None:
    with pytest.raises(KeySourceError, match="awskms reference"):
        parse_kms(reference)


def test_kms_context_names_tenant_version_and_purpose() -> None:
    assert encryption_context("dek|t-1|3", "kms.broker") == {
        "purpose": "dek", "tenant": "t-1", "key_version": "3", "master": "kms.broker"}
    assert encryption_context("audit|2", "m")["purpose"] == "audit"
    assert encryption_context("dek|t-1|3", "m") != encryption_context("dek|t-2|3", "m")


def test_a_keyring_mixes_local_keys_and_references_primary_first() -> None:
    value = ",".join([HSM, format_key_line("m-file", new_key()), "awskms:alias/broker"])
    masters = EnvKeyProvider(value, RemoteOptions(pin="1")).masters()
    assert [(m.key_id, m.provider, m.exportable) for m in masters] == [
        ("master-1", "pkcs11", False), ("m-file", "env", True), ("kms.broker", "awskms", False)]


def test_a_keyring_refuses_the_same_id_from_two_providers() -> None:
    value = ",".join([HSM, format_key_line("master-1", new_key())])
    with pytest.raises(KeySourceError, match="appears twice"):
        EnvKeyProvider(value, RemoteOptions(pin="1")).masters()


def test_a_pkcs11_master_without_a_pin_stops_start_up() -> None:
    with pytest.raises(KeySourceError, match="BROKER_PKCS11_PIN"):
        EnvKeyProvider(HSM).masters()


def test_unknown_scheme_is_not_taken_for_a_local_key() -> None:
    with pytest.raises(KeySourceError, match="entry 1 is not valid base64"):
        EnvKeyProvider("vault:transit/broker").masters()


def test_the_pin_comes_from_the_setting_or_its_file(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("5678\n", encoding="utf-8")
    assert read_pin(RemoteOptions(pin="1234")) == "1234"
    assert read_pin(RemoteOptions(pin_file=str(pin_file))) == "5678"
    with pytest.raises(KeySourceError, match="BROKER_PKCS11_PIN"):
        read_pin(RemoteOptions())
    with pytest.raises(KeySourceError, match="cannot be read"):
        read_pin(RemoteOptions(pin_file=str(tmp_path / "missing")))
