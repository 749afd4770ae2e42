"""Pure decisions on plain values and `now`: login age, scopes, token freshness, backoff."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from broker.scopes import IDENTITY, is_gmail, normalise

# Google's rule: a grant unused for six months dies.
UNUSED_LIMIT = dt.timedelta(days=182)
# Testing-status apps' refresh tokens last seven days.
TESTING_TTL = dt.timedelta(days=7)


def login_fresh(last_login_at: dt.datetime | None, max_age: int | None, now: dt.datetime) -> bool:
    """Say whether the user signed in recently enough for a hand-out (no limit when None)."""
    if max_age is None:
        return True
    if last_login_at is None:
        return False
    return now - last_login_at <= dt.timedelta(seconds=max_age)


def requested_scopes(
    requested: Iterable[str] | None, allowed: Iterable[str], granted: Iterable[str]
) -> list[str]:
    """Return the full, sorted scopes asked for; the default is allowed ∩ granted."""
    if requested is None:
        return sorted(set(normalise(list(allowed))) & set(normalise(list(granted))))
    return normalise(list(requested))


def usable(granted: Iterable[str], withheld: Iterable[str] | None) -> list[str]:
    """Return the granted scopes jobs may use: those the user has not withheld."""
    return sorted(set(granted) - set(withheld or ()))


def withheld_among(scopes: Iterable[str], withheld: Iterable[str] | None) -> list[str]:
    """Return the scopes asked for that the user withholds."""
    return sorted(set(scopes) & set(withheld or ()))


def not_allowed(scopes: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Return the scopes a client may not ask for (identity scopes are always allowed)."""
    permitted = set(normalise(list(allowed))) | set(IDENTITY)
    return sorted(s for s in scopes if s not in permitted)


def not_granted(scopes: Iterable[str], granted: Iterable[str]) -> list[str]:
    """Return the scopes the user has not granted."""
    have = set(normalise(list(granted)))
    return sorted(s for s in scopes if s not in have)


def broader(answered: Iterable[str], asked: Iterable[str]) -> list[str]:
    """Return the Gmail scopes Google answered beyond those asked for."""
    wanted = set(asked)
    return sorted(s for s in answered if is_gmail(s) and s not in wanted)


def within_key(scopes: Iterable[str], key: str, allow_broader: bool) -> bool:
    """Say whether a stored token's scopes may serve its scope key under the tenant's policy."""
    return allow_broader or not broader(scopes, key.split(" "))


def token_ready(
    expires_at: dt.datetime, obtained_at: dt.datetime, min_ttl: int, skew: float,
    now: dt.datetime,
) -> bool:
    """Say whether a stored token serves `min_ttl`.

    When Google's own lifetime is shorter than `min_ttl`, a token still young enough serves:
    refreshing again would bring no longer lifetime, only a loop.
    """
    remaining = (expires_at - now).total_seconds()
    lifetime = (expires_at - obtained_at).total_seconds()
    needed = min(min_ttl + skew, lifetime - max(skew, 30.0))
    return remaining > 0 and remaining >= needed


def diagnose_invalid_grant(
    error_subtype: str | None,
    created_at: dt.datetime,
    last_refresh_at: dt.datetime | None,
    last_used_at: dt.datetime | None,
    now: dt.datetime,
) -> str:
    """Name the likeliest reason Google refused the grant (it gives none on the wire)."""
    if error_subtype == "invalid_rapt":
        return "reauth_policy"
    last_activity = max(d for d in (created_at, last_refresh_at, last_used_at) if d is not None)
    if now - last_activity >= UNUSED_LIMIT:
        return "unused_too_long"
    if TESTING_TTL <= now - created_at < TESTING_TTL + dt.timedelta(days=1):
        return "testing_app_expiry"
    return "revoked_or_expired"
