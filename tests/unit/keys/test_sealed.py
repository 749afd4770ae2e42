"""Sealed values: round trip, binding, tamper detection, keyring parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.keys.sealed import (
    Binding,
    EnvKeyProvider,
    FileKeyProvider,
    Keyring,
    KeySourceError,
    SealError,
    format_key_line,
    new_key,
    open_sealed,
    parse_keyring,
    seal,
)

KEY = new_key()
BINDING = Binding("tenant-a", "row-1", "refresh_token")
SECRET = b"1//refresh-token-secret-value"


def test_round_trip() -> None:
    assert open_sealed(KEY, seal(KEY, 1, SECRET, BINDING), BINDING) == SECRET


def test_same_plaintext_sealed_twice_differs() -> None:
    assert seal(KEY, 1, SECRET, BINDING) != seal(KEY, 1, SECRET, BINDING)


@pytest.mark.parametrize(
    "other",
    [
        Binding("tenant-b", "row-1", "refresh_token"),
        Binding("tenant-a", "row-2", "refresh_token"),
        Binding("tenant-a", "row-1", "access_token"),
    ],
)
def test_moved_value_does_not_open(other: Binding) -> None:
    blob = seal(KEY, 1, SECRET, BINDING)
    with pytest.raises(SealError):
        open_sealed(KEY, blob, other)


def test_other_key_does_not_open() -> None:
    with pytest.raises(SealError):
        open_sealed(new_key(), seal(KEY, 1, SECRET, BINDING), BINDING)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_flipped_byte_is_detected(data: st.DataObject) -> None:
    blob = bytearray(seal(KEY, 1, SECRET, BINDING))
    offset = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[offset] ^= 1 << bit
    with pytest.raises(SealError):
        open_sealed(KEY, bytes(blob), BINDING)


def test_every_offset_flip_and_truncation_is_detected() -> None:
    blob = seal(KEY, 7, SECRET, BINDING)
    for offset in range(len(blob)):
        changed = bytearray(blob)
        changed[offset] ^= 0x01
        with pytest.raises(SealError):
            open_sealed(KEY, bytes(changed), BINDING)
    for length in range(len(blob)):
        with pytest.raises(SealError):
            open_sealed(KEY, blob[:length], BINDING)


def test_errors_never_echo_key_or_plaintext() -> None:
    blob = bytearray(seal(KEY, 1, SECRET, BINDING))
    blob[-1] ^= 1
    with pytest.raises(SealError) as info:
        open_sealed(KEY, bytes(blob), BINDING)
    text = repr(info.value) + str(info.value) + repr(info.value.__cause__)
    for needle in (SECRET, KEY, base64.b64encode(KEY)):
        assert needle.decode("latin-1") not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_keyring_parses_and_reports_source_only() -> None:
    line = format_key_line("k1", KEY)
    assert parse_keyring(line + "\n", "src") == {"k1": KEY}
    for bad in ("", "nokey", "k1:!!!", f"k1:{base64.b64encode(b'short').decode()}",
                f"{line},{line}"):
        with pytest.raises(KeySourceError) as info:
            parse_keyring(bad, "the-source")
        assert str(info.value).startswith("the-source")
        assert base64.b64encode(KEY).decode() not in str(info.value)


def test_file_provider_names_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "master.keys"
    with pytest.raises(KeySourceError, match=str(path)):
        FileKeyProvider(path).load()
    path.write_text("corrupted\n")
    path.chmod(0o600)
    with pytest.raises(KeySourceError, match=f"{path}: entry 1"):
        FileKeyProvider(path).load()
    FileKeyProvider(path).write({"a": KEY})
    assert path.stat().st_mode & 0o777 == 0o600
    assert FileKeyProvider(path).load() == {"a": KEY}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610])
def test_file_provider_refuses_a_file_open_to_group_or_others(tmp_path, mode: int) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "master.keys"
    FileKeyProvider(path).write({"a": KEY})
    path.chmod(mode)
    with pytest.raises(KeySourceError) as info:
        FileKeyProvider(path).load()
    assert str(info.value) == (
        f"{path}: master key file is open to group or others (mode {mode:04o}); "
        f"run `chmod 600 {path}`"
    )
    assert base64.b64encode(KEY).decode() not in str(info.value)
    path.chmod(0o400)  # owner read-only is as private as 0600
    assert FileKeyProvider(path).load() == {"a": KEY}


def test_keyring_wraps_under_primary_and_reloads_on_unknown_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "master.keys"
    provider = FileKeyProvider(path)
    provider.write({"old": KEY})
    ring = Keyring(provider)
    key_id, wrapped = ring.wrap(b"k" * 32, "dek|t|1")
    assert key_id == "old"
    # Another process rotates: this keyring learns the new id from the file on first use.
    other = new_key()
    provider.write({"new": other, "old": KEY})
    foreign = Keyring(provider).wrap(b"z" * 32, "dek|t|2")
    assert ring.unwrap(*foreign, "dek|t|2") == b"z" * 32
    assert ring.unwrap(key_id, wrapped, "dek|t|1") == b"k" * 32


def test_env_provider() -> None:
    ring = Keyring(EnvKeyProvider(f"a:{base64.b64encode(KEY).decode()}"))
    assert ring.primary_id == "a"
