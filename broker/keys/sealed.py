"""Master keyring, key providers and the sealed-value format (AES-256-GCM, AAD-bound)."""

from __future__ import annotations

import abc
import base64
import binascii
import os
import re
import secrets
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.metrics import KEY_SERVICE_ERRORS

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT_VERSION = 1
# Values bound to more than their row (an access token's connection and scope key) carry
# format 2, so a value sealed before that binding existed is told apart, never mistaken.
BOUND_FORMAT = 2
HEADER = struct.Struct(">BI")  # format version, data key version
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CryptoError(Exception):
    """A key or sealed value problem; the message never carries key or plaintext material."""


class KeySourceError(CryptoError):
    """The master key source is missing or malformed."""


class SealError(CryptoError):
    """A sealed value does not open: tampered, moved, truncated or its key is gone."""


def new_key() -> bytes:
    """Return 32 random bytes from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def new_key_id() -> str:
    """Return a short random master key id."""
    return "mk-" + secrets.token_hex(4)


def format_key_line(key_id: str, key: bytes) -> str:
    """Return the `id:base64` line of a master key."""
    return f"{key_id}:{base64.b64encode(key).decode()}"


def parse_keyring(text: str, source: str) -> dict[str, bytes]:
    """Parse `id:base64` entries (commas or new lines); raise naming the source, not the keys."""
    entries = split_entries(text)
    if not entries:
        raise KeySourceError(f"{source}: no master key found")
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(entries, 1):
        key_id, key = parse_entry(entry, source, number)
        if key_id in keys:
            raise KeySourceError(f"{source}: key id {key_id!r} appears twice")
        keys[key_id] = key
    return keys


def parse_entry(entry: str, source: str, number: int) -> tuple[str, bytes]:
    """Parse one `id:base64` entry; raise naming the source and entry number, not the key."""
    key_id, sep, encoded = entry.partition(":")
    if not sep or not KEY_ID.match(key_id):
        raise KeySourceError(f"{source}: entry {number} is not 'id:base64'")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeySourceError(f"{source}: entry {number} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeySourceError(f"{source}: entry {number} is not a 32-byte key")
    return key_id, key


class KeyServiceError(CryptoError):
    """The service holding a master key (HSM, KMS) did not answer: retry later, change nothing."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


@dataclass(frozen=True)
class RemoteOptions:
    """What remote masters need besides their reference: the token PIN and a time budget."""

    pin: str | None = None
    pin_file: str | None = None
    timeout: float = 5.0


class MasterKey(abc.ABC):
    """One master key: wraps and unwraps data keys, bound to their context and to its own id.

    `unwrap` raises SealError when the blob does not open under this key, and KeyServiceError
    when the key's service cannot be asked (so a caller never mistakes an outage for tampering).
    """

    key_id: str
    provider: str
    exportable: bool

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Say where the key lives (a path, token and label, an ARN), never key material."""

    @abc.abstractmethod
    def wrap(self, key: bytes, context: str) -> bytes:
        """Wrap a data key for this context."""

    @abc.abstractmethod
    def unwrap(self, blob: bytes, context: str) -> bytes:
        """Unwrap a data key wrapped for this context."""


class LocalMaster(MasterKey):
    """A master key held in this process: AES-256-GCM, AAD = context and key id."""

    exportable = True

    def __init__(self, key_id: str, key: bytes, provider: str, source: str) -> None:
        self.key_id, self.provider, self._key, self._source = key_id, provider, key, source

    @property
    def location(self) -> str:
        return self._source

    def wrap(self, key: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{context}|{self.key_id}".encode()
        return nonce + AESGCM(self._key).encrypt(nonce, key, aad)

    def unwrap(self, blob: bytes, context: str) -> bytes:
        aad = f"{context}|{self.key_id}".encode()
        try:
            return AESGCM(self._key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            # A SealError: what it wraps is unopenable (a swapped or edited row), like a value.
            raise SealError("a wrapped data key does not open under its master key") from None


class KeyProvider(abc.ABC):
    """Where master keys come from: a file, a variable, a PKCS#11 token, a KMS."""

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """Name the source in messages (a path or variable name, never key material)."""

    @abc.abstractmethod
    def masters(self) -> list[MasterKey]:
        """Return the master keys, primary first; raise KeySourceError if missing or malformed."""


class RemoteProvider(KeyProvider):
    """One master key held by a key service, named by a reference; it never leaves the service."""

    key_id: str


REMOTE_SCHEMES = ("pkcs11", "awskms")


def is_reference(entry: str) -> bool:
    """Say whether a keyring entry names a remote master (`pkcs11:…`, `awskms:…`)."""
    return entry.partition(":")[0] in REMOTE_SCHEMES


def remote_provider(reference: str, options: RemoteOptions) -> RemoteProvider:
    """Return the provider of a remote master reference, chosen by its scheme."""
    # Imported here: the remote modules import this one, and need their library only when used.
    if reference.startswith("pkcs11:"):
        from broker.keys.pkcs11 import Pkcs11KeyProvider

        return Pkcs11KeyProvider(reference, options)
    if reference.startswith("awskms:"):
        from broker.keys.awskms import AwsKmsKeyProvider

        return AwsKmsKeyProvider(reference, options)
    raise KeySourceError(f"unknown master key scheme {reference.partition(':')[0]!r}")


def split_entries(text: str) -> list[str]:
    """Split a keyring's text into entries (commas or new lines; # starts a comment line)."""
    return [e.strip() for e in re.split(r"[,\n]", text) if e.strip() and not e.startswith("#")]


def parse_masters(
    text: str, source: str, provider: str, options: RemoteOptions
) -> list[MasterKey]:
    """Parse local `id:base64` entries and remote references, primary first."""
    entries = split_entries(text)
    if not entries:
        raise KeySourceError(f"{source}: no master key found")
    masters: list[MasterKey] = []
    for number, entry in enumerate(entries, 1):
        if is_reference(entry):
            masters.extend(remote_provider(entry, options).masters())
        else:
            key_id, key = parse_entry(entry, source, number)
            masters.append(LocalMaster(key_id, key, provider, source))
    seen: set[str] = set()
    for master in masters:
        if master.key_id in seen:
            raise KeySourceError(f"{source}: key id {master.key_id!r} appears twice")
        seen.add(master.key_id)
    return masters


class EnvKeyProvider(KeyProvider):
    """Master keys from `BROKER_MASTER_KEYS`: `id:base64` entries and remote references."""

    def __init__(self, value: str, options: RemoteOptions | None = None) -> None:
        self._value = value
        self._options = options or RemoteOptions()

    @property
    def source(self) -> str:
        return "BROKER_MASTER_KEYS"

    def load(self) -> dict[str, bytes]:
        """Return the local keys (only `id:base64` entries)."""
        return parse_keyring(self._value, self.source)

    def masters(self) -> list[MasterKey]:
        return parse_masters(self._value, self.source, "env", self._options)


class FileKeyProvider(KeyProvider):
    """Master keys from a 0600 file, one `id:base64` or remote reference per line, primary first.

    A file that group or others may read, write or run is refused: keys another account can
    read are no longer secret.
    """

    def __init__(self, path: Path, options: RemoteOptions | None = None) -> None:
        self.path = path
        self._options = options or RemoteOptions()

    @property
    def source(self) -> str:
        return str(self.path)

    def read(self) -> str:
        """Return the file's text, refusing a file open to group or others."""
        try:
            with self.path.open("rb") as fh:
                # Checked on the open file, so a swap between the check and the read cannot slip by.
                mode = os.fstat(fh.fileno()).st_mode & 0o777
                if os.name == "posix" and mode & 0o077:
                    raise KeySourceError(
                        f"{self.path}: master key file is open to group or others "
                        f"(mode {mode:04o}); run `chmod 600 {self.path}`"
                    )
                return fh.read().decode("ascii")
        except FileNotFoundError:
            raise KeySourceError(f"{self.path}: master key file not found") from None
        except (OSError, UnicodeDecodeError):
            raise KeySourceError(f"{self.path}: master key file cannot be read") from None

    def load(self) -> dict[str, bytes]:
        """Return the local keys (a file of `id:base64` lines only)."""
        return parse_keyring(self.read(), self.source)

    def masters(self) -> list[MasterKey]:
        return parse_masters(self.read(), self.source, "file", self._options)

    def entries(self) -> list[str]:
        """Return the file's entries as written, primary first."""
        return split_entries(self.read())

    def write(self, keys: dict[str, bytes]) -> None:
        """Replace the file atomically with these keys, mode 0600."""
        self.write_entries([format_key_line(k, v) for k, v in keys.items()])

    def write_entries(self, entries: list[str]) -> None:
        """Replace the file atomically with these entries (keys or references), mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("".join(entry + "\n" for entry in entries))
        os.replace(tmp, self.path)
        os.chmod(self.path, 0o600)


def entry_id(entry: str, options: RemoteOptions | None = None) -> str:
    """Return the master key id a keyring entry defines (no key service is asked)."""
    if is_reference(entry):
        return remote_provider(entry, options or RemoteOptions()).key_id
    return entry.partition(":")[0]


class Keyring:
    """The master keys of this process; reloads its source once on an unknown key id."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self._lock = threading.Lock()
        self._masters = {m.key_id: m for m in provider.masters()}

    @property
    def primary_id(self) -> str:
        """Return the id of the key that wraps new data keys."""
        return next(iter(self._masters))

    def ids(self) -> list[str]:
        """Return the key ids, primary first."""
        return list(self._masters)

    def masters(self) -> list[MasterKey]:
        """Return the master keys, primary first."""
        return list(self._masters.values())

    def reload(self) -> None:
        """Read the key source again (another process may have rotated)."""
        with self._lock:
            self._masters = {m.key_id: m for m in self.provider.masters()}

    def master(self, key_id: str) -> MasterKey:
        """Return a master key, reloading the source once if the id is unknown."""
        if key_id not in self._masters:
            self.reload()
        try:
            return self._masters[key_id]
        except KeyError:
            raise CryptoError(f"master key {key_id!r} is not in {self.provider.source}") from None

    def wrap(self, key: bytes, context: str) -> tuple[str, bytes]:
        """Wrap a data key under the primary master key; return (master key id, blob)."""
        master = self.master(self.primary_id)
        return master.key_id, _counted(master, lambda: master.wrap(key, context))

    def unwrap(self, key_id: str, blob: bytes, context: str) -> bytes:
        """Unwrap a data key wrapped under `key_id` for this context."""
        master = self.master(key_id)
        return _counted(master, lambda: master.unwrap(blob, context))


def _counted(master: MasterKey, call: Callable[[], bytes]) -> bytes:
    try:
        return call()
    except KeyServiceError:
        KEY_SERVICE_ERRORS.labels(provider=master.provider).inc()
        raise


def provider_from_settings(
    master_keys: str | None, keys_file: Path, options: RemoteOptions | None = None
) -> KeyProvider:
    """Pick the environment's keyring when given, else the key file."""
    if master_keys:
        return EnvKeyProvider(master_keys, options)
    return FileKeyProvider(keys_file, options)


@dataclass(frozen=True)
class Binding:
    """What a sealed value belongs to: its tenant, row and field, and what else it is bound to."""

    tenant: str
    row: str
    field: str
    # More of the row than its id (e.g. an access token's connection and scope key): a value
    # whose row is moved to another connection or scope set no longer opens.
    bound: tuple[str, ...] = ()


def _aad(header: bytes, binding: Binding) -> bytes:
    parts = [header, b"tok", binding.tenant.encode(), binding.row.encode(), binding.field.encode()]
    return b"|".join(parts + [part.encode() for part in binding.bound])


def seal(key: bytes, key_version: int, plaintext: bytes, binding: Binding) -> bytes:
    """Encrypt under a data key with a fresh random nonce; the header is inside the AAD."""
    header = HEADER.pack(BOUND_FORMAT if binding.bound else FORMAT_VERSION, key_version)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(header, binding))


def sealed_version(blob: bytes) -> int:
    """Return the data key version a sealed value names (unauthenticated until opened)."""
    if len(blob) < HEADER.size + NONCE_BYTES + 16:
        raise SealError("sealed value is truncated")
    fmt, version = HEADER.unpack_from(blob)
    if fmt not in (FORMAT_VERSION, BOUND_FORMAT):
        raise SealError("sealed value has an unknown format")
    return int(version)


def is_unbound(blob: bytes) -> bool:
    """Say whether a sealed value names format 1, bound to its row only (unauthenticated)."""
    return blob[:1] == bytes([FORMAT_VERSION])


def open_sealed(key: bytes, blob: bytes, binding: Binding) -> bytes:
    """Decrypt a sealed value bound to this binding, or raise SealError."""
    sealed_version(blob)
    header = blob[: HEADER.size]
    nonce = blob[HEADER.size : HEADER.size + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[HEADER.size + NONCE_BYTES :], _aad(header, binding))
    except InvalidTag:
        raise SealError("sealed value does not open: tampered, moved or wrong key") from None


def key_lines(keys: Iterable[tuple[str, bytes]]) -> str:
    """Return a keyring as `id:base64,…` for BROKER_MASTER_KEYS."""
    return ",".join(format_key_line(k, v) for k, v in keys)
