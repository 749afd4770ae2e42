"""Pure hand-out decisions: login age, scopes, token freshness, diagnosis, backoff."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.clock import backoff
from broker.scopes import EMAIL, InvalidScope
from broker.tokens import rules as policy

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
R = "https://www.googleapis.com/auth/gmail.readonly"
S = "https://www.googleapis.com/auth/gmail.send"


def test_login_fresh() -> None:
    assert policy.login_fresh(None, None, NOW)
    assert not policy.login_fresh(None, 60, NOW)
    assert policy.login_fresh(NOW - dt.timedelta(seconds=60), 60, NOW)
    assert not policy.login_fresh(NOW - dt.timedelta(seconds=61), 60, NOW)


def test_scopes_default_to_allowed_and_granted_in_full_form() -> None:
    assert policy.requested_scopes(None, ["gmail.readonly", "gmail.send"], [R]) == [R]
    assert policy.requested_scopes(["gmail.send", S], [], []) == [S]
    with pytest.raises(InvalidScope):
        policy.requested_scopes(["gmail.everything"], [], [])
    assert policy.not_allowed([R, S, EMAIL], ["gmail.readonly"]) == [S]
    assert policy.not_granted([R, S], [R]) == [S]
    assert policy.broader([R, S, "openid"], [R]) == [S]


def test_a_stored_token_serves_its_scope_key_only_within_the_policy() -> None:
    # Identity scopes ride along; only Gmail scopes beyond the key make a token broader.
    assert policy.within_key([R, "openid", EMAIL], R, allow_broader=False)
    assert not policy.within_key([R, S], R, allow_broader=False)
    assert policy.within_key([R, S], R, allow_broader=True)
    assert policy.within_key([R, S], f"{R} {S}", allow_broader=False)


@pytest.mark.parametrize(
    ("remaining", "lifetime", "min_ttl", "ready"),
    [(3500, 3599, 300, True), (300, 3599, 300, False), (361, 3599, 300, True),
     (100, 120, 300, True), (20, 120, 300, False), (0, 120, 0, False)],
)
def test_token_ready(remaining: int, lifetime: int, min_ttl: int, ready: bool) -> None:
    expires = NOW + dt.timedelta(seconds=remaining)
    obtained = expires - dt.timedelta(seconds=lifetime)
    assert policy.token_ready(expires, obtained, min_ttl, 60.0, NOW) is ready


def test_diagnose_invalid_grant() -> None:
    created = NOW - dt.timedelta(days=30)
    assert policy.diagnose_invalid_grant("invalid_rapt", created, None, None, NOW) == \
        "reauth_policy"
    assert policy.diagnose_invalid_grant(
        None, NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=200), None, NOW
    ) == "unused_too_long"
    assert policy.diagnose_invalid_grant(
        None, NOW - dt.timedelta(days=7, hours=2), NOW - dt.timedelta(hours=1), None, NOW
    ) == "testing_app_expiry"
    assert policy.diagnose_invalid_grant(None, created, NOW, NOW, NOW) == "revoked_or_expired"


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    assert 0.5 <= backoff(1) <= 1.0
    assert 4.0 <= backoff(4) <= 8.0
    assert backoff(50, cap=300) <= 300
