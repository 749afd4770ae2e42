"""Master keys in a PKCS#11 token (an HSM, SoftHSM2): AES-GCM inside the token, never exported.

A reference reads `pkcs11:module=PATH;token=LABEL;key=LABEL[;id=ID]`; the PIN comes from
`BROKER_PKCS11_PIN` or `BROKER_PKCS11_PIN_FILE`. One session per module is shared under a
lock: unwraps are rare (data keys are cached), and a failed session is dropped and the module
re-initialised, so the broker recovers when the token does, without a restart.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from broker.keys.sealed import (
    KEY_ID,
    NONCE_BYTES,
    KeyServiceError,
    KeySourceError,
    MasterKey,
    RemoteOptions,
    RemoteProvider,
    SealError,
)

PROVIDER = "pkcs11"
TAG_BITS = 128
T = TypeVar("T")


def parse_reference(reference: str) -> dict[str, str]:
    """Split a `pkcs11:` reference into its fields; raise KeySourceError naming what is wrong."""
    body = reference.removeprefix("pkcs11:")
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        name, sep, value = part.partition("=")
        if not sep or name not in {"module", "token", "key", "id"} or not value:
            raise KeySourceError(f"pkcs11 reference: {part.split('=')[0]!r} is not module=, "
                                 "token=, key= or id=")
        fields[name] = value
    missing = [name for name in ("module", "token", "key") if name not in fields]
    if missing:
        raise KeySourceError(f"pkcs11 reference: missing {', '.join(missing)}=")
    fields.setdefault("id", fields["key"])
    if not KEY_ID.match(fields["id"]):
        raise KeySourceError("pkcs11 reference: the key id must be 1-64 of A-Z a-z 0-9 _ . -")
    return fields


def read_pin(options: RemoteOptions) -> str:
    """Return the token's user PIN from the setting or its file; raise KeySourceError if none."""
    if options.pin:
        return options.pin
    if options.pin_file:
        try:
            return Path(options.pin_file).read_text(encoding="utf-8").strip()
        except OSError:
            raise KeySourceError(f"{options.pin_file}: PIN file cannot be read") from None
    raise KeySourceError("a pkcs11 master key needs BROKER_PKCS11_PIN or BROKER_PKCS11_PIN_FILE")


class _Module:
    """One loaded PKCS#11 library: its logged-in sessions by token, behind one lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._lib: Any = None
        self._sessions: dict[str, Any] = {}
        self._pid = os.getpid()

    def run(self, token: str, pin: str, call: Callable[[Any], T]) -> T:
        """Run `call(session)` on the token's session, opening it first if needed.

        A failure drops the session and re-initialises the module, then tries once more on a
        fresh one: a token that came back is used at once, one that is gone raises.
        """
        import pkcs11

        with self.lock:
            for attempt in (1, 2):
                try:
                    return call(self._session(token, pin))
                except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
                    self._reset()
                    if attempt == 2:
                        raise KeyServiceError(
                            PROVIDER,
                            f"PKCS#11 token {token!r} did not answer ({type(exc).__name__})",
                        ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _session(self, token: str, pin: str) -> Any:
        import pkcs11

        if self._pid != os.getpid():
            # A forked worker (gunicorn) must not use its parent's sessions: start afresh.
            self._pid, self._sessions = os.getpid(), {}
            if self._lib is not None:
                self._lib.reinitialize()
        if self._lib is None:
            self._lib = pkcs11.lib(self.path)
        session = self._sessions.get(token)
        if session is None:
            session = self._lib.get_token(token_label=token).open(user_pin=pin, rw=True)
            self._sessions[token] = session
        return session

    def _reset(self) -> None:
        # A session whose token vanished cannot log in again until the module re-initialises.
        self._sessions.clear()
        if self._lib is not None:
            try:
                self._lib.reinitialize()
            except Exception:  # noqa: BLE001, S110 - the next call reports the outage
                pass


_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()


def module(path: str) -> _Module:
    """Return the process's handle on a PKCS#11 library (loaded once)."""
    with _MODULES_LOCK:
        return _MODULES.setdefault(path, _Module(path))


class Pkcs11Master(MasterKey):
    """An AES-256 key on a PKCS#11 token; data keys are wrapped with AES-GCM on the token."""

    provider = PROVIDER
    exportable = False

    def __init__(self, fields: dict[str, str], options: RemoteOptions) -> None:
        self.key_id = fields["id"]
        self.fields = fields
        self.options = options

    @property
    def location(self) -> str:
        return f"token {self.fields['token']}, key {self.fields['key']} ({self.fields['module']})"

    def _key(self, session: Any) -> Any:
        from pkcs11 import KeyType, ObjectClass

        return session.get_key(
            label=self.fields["key"], key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
        )

    def _run(self, call: Callable[[Any], T]) -> T:
        return module(self.fields["module"]).run(
            self.fields["token"], read_pin(self.options), lambda s: call(self._key(s))
        )

    def wrap(self, key: bytes, context: str) -> bytes:
        from pkcs11 import GCMParams, Mechanism

        nonce = os.urandom(NONCE_BYTES)
        params = GCMParams(nonce, self._aad(context), TAG_BITS)
        return nonce + bytes(self._run(
            lambda k: k.encrypt(key, mechanism=Mechanism.AES_GCM, mechanism_param=params)
        ))

    def unwrap(self, blob: bytes, context: str) -> bytes:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        params = GCMParams(blob[:NONCE_BYTES], self._aad(context), TAG_BITS)

        def decrypt(k: Any) -> bytes | None:
            try:
                return bytes(k.decrypt(blob[NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                                       mechanism_param=params))
            except pkcs11.PKCS11Error:
                # Tokens report a bad tag variously (SoftHSM: a general error); the key answered
                # (it was found), so ask it once more below to tell tampering from an outage.
                return None

        plain = self._run(decrypt)
        if plain is None:
            self._run(lambda k: k.encrypt(b"\0" * 16, mechanism=Mechanism.AES_GCM,
                                          mechanism_param=GCMParams(os.urandom(NONCE_BYTES))))
            raise SealError("a wrapped data key does not open under its master key")
        return plain

    def _aad(self, context: str) -> bytes:
        return f"{context}|{self.key_id}".encode()


class Pkcs11KeyProvider(RemoteProvider):
    """The master key a `pkcs11:` reference names."""

    def __init__(self, reference: str, options: RemoteOptions) -> None:
        self.fields = parse_reference(reference)
        self.key_id = self.fields["id"]
        self.options = options

    @property
    def source(self) -> str:
        return f"pkcs11 token {self.fields['token']}"

    def masters(self) -> list[MasterKey]:
        read_pin(self.options)  # a missing PIN stops start-up, like a missing key file
        return [Pkcs11Master(self.fields, self.options)]


def init_key(module_path: str, token: str, label: str, pin: str) -> None:
    """Create a non-exportable AES-256 key on an initialised token; refuse an existing label."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    def create(session: Any) -> None:
        found = list(session.get_objects({Attribute.LABEL: label,
                                          Attribute.CLASS: ObjectClass.SECRET_KEY}))
        if found:
            raise KeySourceError(f"token {token!r} already has a key labelled {label!r}")
        session.generate_key(KeyType.AES, 256, label=label, store=True, template={
            Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True,
            Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
        })

    module(module_path).run(token, pin, create)
