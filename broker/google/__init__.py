"""Google as the broker calls it: authorize URLs, code exchange, refresh, revoke, id_token."""

from broker.google.client import (
    Failure,
    Google,
    GoogleError,
    IdTokenError,
    NotConfigured,
    TokenResponse,
    classify,
    get_google,
)

__all__ = ["Failure", "Google", "GoogleError", "IdTokenError", "NotConfigured", "TokenResponse",
           "classify", "get_google"]
