"""Google as the broker calls it: authorize URLs, code exchange, refresh, revoke, id_token."""

from broker.google.client import (
    Google,
    GoogleError,
    IdTokenError,
    NotConfigured,
    TokenResponse,
    get_google,
)

__all__ = ["Google", "GoogleError", "IdTokenError", "NotConfigured", "TokenResponse",
           "get_google"]
