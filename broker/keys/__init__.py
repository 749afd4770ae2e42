"""Keys: the sealed format, master key providers and keyring, tenant data keys, re-seal (§5)."""

from broker.keys.duties import reseal
from broker.keys.extension import build_key_service, get_keys, init_app
from broker.keys.sealed import (
    CryptoError,
    FileKeyProvider,
    KeyProvider,
    Keyring,
    KeySourceError,
    SealError,
    format_key_line,
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
    "REFRESH_TOKEN_ID_COLUMNS", "CryptoError", "FileKeyProvider", "KeyProvider", "KeyService",
    "KeySourceError", "Keyring", "ResealReport", "SealError", "access_token_bound",
    "build_key_service", "digest",
    "format_key_line", "get_keys", "init_app", "is_unbound", "new_key", "new_key_id", "new_secret",
    "refresh_token_ids", "reseal", "reseal_tenant", "token_id",
]
