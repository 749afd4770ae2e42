"""Scope names: short and full forms, identity aliases, canonical keys."""

from __future__ import annotations

import pytest

from broker.scopes import EMAIL, PREFIX, InvalidScope, normalise, parse_google, scope_key


def test_short_and_full_forms_normalise_alike() -> None:
    assert normalise(["gmail.readonly", PREFIX + "gmail.readonly", "email"]) == [
        PREFIX + "gmail.readonly", EMAIL]
    assert scope_key(["gmail.send", "gmail.readonly"]) == scope_key(
        [PREFIX + "gmail.readonly", PREFIX + "gmail.send"])


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(InvalidScope):
        normalise(["drive"])


def test_google_answer_keeps_unknown_scopes() -> None:
    assert parse_google("openid https://www.googleapis.com/auth/drive email") == [
        "https://www.googleapis.com/auth/drive", EMAIL, "openid"]
