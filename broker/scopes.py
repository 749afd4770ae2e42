"""Google scopes: short and full names, Gmail scopes with plain explanations, canonical keys."""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "https://www.googleapis.com/auth/"
EMAIL = PREFIX + "userinfo.email"
PROFILE = PREFIX + "userinfo.profile"
OPENID = "openid"
IDENTITY = (OPENID, EMAIL, PROFILE)
MAIL_GOOGLE_COM = "https://mail.google.com/"

GMAIL_SCOPES: dict[str, str] = {
    PREFIX + "gmail.readonly": "Read your messages and settings",
    PREFIX + "gmail.send": "Send email on your behalf",
    PREFIX + "gmail.modify": "Read, compose and send messages, and move them (no permanent delete)",
    PREFIX + "gmail.compose": "Manage drafts and send email",
    PREFIX + "gmail.labels": "See and edit your labels",
    PREFIX + "gmail.metadata": "See message headers and labels, not bodies",
    PREFIX + "gmail.insert": "Add messages to your mailbox",
    PREFIX + "gmail.settings.basic": "Manage basic mail settings",
    PREFIX + "gmail.settings.sharing": "Manage sensitive mail settings such as forwarding",
    MAIL_GOOGLE_COM: "Full access to your mailbox, including permanent deletion",
}
_ALIASES = {"email": EMAIL, "profile": PROFILE, OPENID: OPENID, "mail.google.com": MAIL_GOOGLE_COM}


class InvalidScope(ValueError):
    """A scope name the broker does not know."""


def full_name(scope: str) -> str:
    """Return the full form of a short or full scope name, or raise InvalidScope."""
    scope = scope.strip()
    if scope in _ALIASES:
        return _ALIASES[scope]
    name = scope if scope.startswith(("https://", "http://")) else PREFIX + scope
    if name in GMAIL_SCOPES or name in IDENTITY:
        return name
    raise InvalidScope(f"unknown scope {scope[:100]!r}")


def normalise(scopes: Iterable[str]) -> list[str]:
    """Return the distinct full names of scopes, sorted."""
    return sorted({full_name(s) for s in scopes})


def parse_google(scope: str | None) -> list[str]:
    """Read Google's space-delimited `scope` answer, keeping unknown scopes as they are."""
    out = set()
    for item in (scope or "").split():
        try:
            out.add(full_name(item))
        except InvalidScope:
            out.add(item)
    return sorted(out)


def is_gmail(scope: str) -> bool:
    """Say whether a full scope name grants Gmail access."""
    return scope in GMAIL_SCOPES


def gmail_only(scopes: Iterable[str]) -> list[str]:
    """Return the Gmail scopes among full scope names, sorted."""
    return sorted(s for s in set(scopes) if is_gmail(s))


def scope_key(scopes: Iterable[str]) -> str:
    """Return the canonical key of a scope set (its sorted full names, space-joined)."""
    return " ".join(normalise(scopes))
