"""Google's scope names, short forms and the set arithmetic the emulator needs."""

from __future__ import annotations

from collections.abc import Iterable

from authlib.oauth2.rfc6749.util import scope_to_list

OPENID = "openid"
EMAIL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
MAIL = "https://mail.google.com/"
GMAIL_PREFIX = "https://www.googleapis.com/auth/gmail."
SHORT_FORMS = {"email": EMAIL, "profile": PROFILE}
IDENTITY_SCOPES = frozenset({OPENID, EMAIL, PROFILE})


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Map the short forms to full scopes and drop duplicates, keeping order."""
    seen: dict[str, None] = {}
    for scope in scopes:
        seen.setdefault(SHORT_FORMS.get(scope, scope), None)
    return list(seen)


def parse_scope(raw: str | None) -> list[str]:
    """Split a space-delimited scope parameter into normalised scopes."""
    return normalize_scopes(scope_to_list(raw or "") or [])


def is_known_scope(scope: str) -> bool:
    """Tell whether Google would accept this scope name at all."""
    return (
        scope in IDENTITY_SCOPES
        or scope == MAIL
        or scope.startswith("https://www.googleapis.com/auth/")
    )


def is_gmail_scope(scope: str) -> bool:
    """Tell whether a scope reaches Gmail (such tokens die on a password change)."""
    return scope == MAIL or scope.startswith(GMAIL_PREFIX)


def with_openid(scopes: Iterable[str]) -> list[str]:
    """Add `openid` when an identity scope is present, as Google does on consent."""
    result = normalize_scopes(scopes)
    if OPENID not in result and (EMAIL in result or PROFILE in result):
        result.append(OPENID)
    return result


def scope_string(scopes: Iterable[str]) -> str:
    """Join scopes the way the token endpoint answers them."""
    return " ".join(sorted(set(scopes)))
