"""Master keys in AWS KMS: data keys wrapped by `Encrypt`/`Decrypt` under an encryption context.

A reference reads `awskms:alias/NAME`, `awskms:KEY-ID` or `awskms:arn:aws:kms:…`; region,
credentials and `AWS_ENDPOINT_URL` are boto3's usual settings. The context names the tenant,
the data key version and the purpose, so a wrapped key copied to another row does not open.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from broker.keys.sealed import (
    KeyServiceError,
    KeySourceError,
    MasterKey,
    RemoteOptions,
    RemoteProvider,
    SealError,
)

PROVIDER = "awskms"
_KEY = re.compile(r"^(alias/[A-Za-z0-9/_-]{1,250}|[A-Za-z0-9-]{1,128}|arn:aws[a-z-]*:kms:[^\s;]+)$")
# KMS's own answers that mean "this blob does not open here", not "KMS is unavailable".
_SEAL_ERRORS = {"InvalidCiphertextException", "IncorrectKeyException"}


def parse_reference(reference: str) -> tuple[str, str]:
    """Return (KMS key, master key id) of an `awskms:` reference; raise KeySourceError."""
    key, _, rest = reference.removeprefix("awskms:").partition(";")
    if not _KEY.match(key):
        raise KeySourceError("awskms reference: expected alias/NAME, a key id or a key ARN")
    if rest:
        name, sep, value = rest.partition("=")
        if name != "id" or not sep or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", value):
            raise KeySourceError("awskms reference: only ;id=ID may follow the key")
        return key, value
    tail = key.rsplit(":", 1)[-1].removeprefix("alias/").removeprefix("key/")
    return key, ("kms." + re.sub(r"[^A-Za-z0-9_.-]", ".", tail))[:64]


def encryption_context(context: str, key_id: str) -> dict[str, str]:
    """Turn a wrapping context (`dek|tenant|version`, `audit|version`) into KMS's context."""
    parts = context.split("|")
    if parts[0] == "dek" and len(parts) == 3:
        return {"purpose": "dek", "tenant": parts[1], "key_version": parts[2], "master": key_id}
    if parts[0] == "audit" and len(parts) == 2:
        return {"purpose": "audit", "tenant": "system", "key_version": parts[1],
                "master": key_id}
    return {"purpose": parts[0], "context": context, "master": key_id}


_CLIENTS: dict[float, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client(timeout: float) -> Any:
    """Return the process's KMS client: short timeouts, one attempt (the caller retries)."""
    import boto3
    from botocore.config import Config

    with _CLIENTS_LOCK:
        if timeout not in _CLIENTS:
            _CLIENTS[timeout] = boto3.session.Session().client("kms", config=Config(
                connect_timeout=timeout, read_timeout=timeout,
                retries={"max_attempts": 1, "mode": "standard"},
            ))
        return _CLIENTS[timeout]


class AwsKmsMaster(MasterKey):
    """A KMS key: `Encrypt`/`Decrypt` with the data key's encryption context."""

    provider = PROVIDER
    exportable = False

    def __init__(self, key: str, key_id: str, options: RemoteOptions) -> None:
        self.kms_key, self.key_id, self.options = key, key_id, options

    @property
    def location(self) -> str:
        return f"AWS KMS {self.kms_key}"

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer: dict[str, Any] = getattr(client(self.options.timeout), operation)(**kwargs)
            return answer
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _SEAL_ERRORS:
                raise SealError("a wrapped data key does not open under its master key") from None
            raise KeyServiceError(PROVIDER, f"AWS KMS refused {operation} ({code})") from None
        except BotoCoreError as exc:
            raise KeyServiceError(
                PROVIDER, f"AWS KMS did not answer {operation} ({type(exc).__name__})"
            ) from None

    def wrap(self, key: bytes, context: str) -> bytes:
        answer = self._call("encrypt", KeyId=self.kms_key, Plaintext=key,
                            EncryptionContext=encryption_context(context, self.key_id))
        return bytes(answer["CiphertextBlob"])

    def unwrap(self, blob: bytes, context: str) -> bytes:
        answer = self._call("decrypt", KeyId=self.kms_key, CiphertextBlob=blob,
                            EncryptionContext=encryption_context(context, self.key_id))
        return bytes(answer["Plaintext"])


class AwsKmsKeyProvider(RemoteProvider):
    """The master key an `awskms:` reference names."""

    def __init__(self, reference: str, options: RemoteOptions) -> None:
        self.kms_key, self.key_id = parse_reference(reference)
        self.options = options

    @property
    def source(self) -> str:
        return f"AWS KMS {self.kms_key}"

    def masters(self) -> list[MasterKey]:
        return [AwsKmsMaster(self.kms_key, self.key_id, self.options)]
