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
from broker.google.methods import GLOBAL_QUERY, Match, Method, MethodTable, gmail_methods

__all__ = ["Failure", "GLOBAL_QUERY", "Google", "GoogleError", "IdTokenError", "Match", "Method",
           "MethodTable", "NotConfigured", "TokenResponse", "classify", "get_google",
           "gmail_methods"]
