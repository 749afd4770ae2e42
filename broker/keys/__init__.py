"""Keys: the sealed format, master key providers and keyring, tenant data keys, re-seal (§5)."""

from broker.keys.duties import reseal
from broker.keys.extension import build_key_service, get_keys, init_app, remote_options
from broker.keys.pkcs11 import init_key as init_hsm_key
from broker.keys.pkcs11 import read_pin
from broker.keys.sealed import (
    CryptoError,
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    Keyring,
    KeyServiceError,
    KeySourceError,
    MasterKey,
    RemoteOptions,
    SealError,
    entry_id,
    format_key_line,
    is_reference,
    is_unbound,
    new_key,
    new_key_id,
)
from broker.keys.secret import (
    REFRESH_TOKEN_ID_COLUMNS,
    digest,
    new_secret,
    refresh_token_ids,
    token_id,
)
from broker.keys.service import KeyService, ResealReport, access_token_bound, reseal_tenant

__all__ = [
    "REFRESH_TOKEN_ID_COLUMNS", "CryptoError", "EnvKeyProvider", "FileKeyProvider", "KeyProvider",
    "KeyService", "KeyServiceError", "KeySourceError", "Keyring", "MasterKey", "RemoteOptions",
    "ResealReport", "SealError", "access_token_bound", "build_key_service", "digest", "entry_id",
    "format_key_line", "get_keys", "init_app", "init_hsm_key", "is_reference", "is_unbound",
    "new_key", "new_key_id", "new_secret", "read_pin", "refresh_token_ids", "remote_options",
    "reseal", "reseal_tenant", "token_id",
]
