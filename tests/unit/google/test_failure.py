"""Google's token endpoint answers classified into a Failure, on the error code alone."""

from __future__ import annotations

from typing import Any

import pytest

from broker.google import Failure, GoogleError, classify


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (503, {"error": "backendError"}, Failure.TRANSIENT),
        (500, {"error": "internal_failure"}, Failure.TRANSIENT),
        (429, {"error": "rate_limit_exceeded"}, Failure.TRANSIENT),
        (400, {"error": "temporarily_unavailable"}, Failure.TRANSIENT),
        (400, {}, Failure.TRANSIENT),  # no OAuth error object: not Google speaking
        (200, {}, Failure.TRANSIENT),
        (400, {"error": "invalid_grant", "error_description": "Bad Request"},
         Failure.INVALID_GRANT),
        (400, {"error": "invalid_grant", "error_subtype": "invalid_rapt"},
         Failure.INVALID_GRANT),
        (400, {"error": "invalid_scope"}, Failure.INVALID_SCOPE),
        (401, {"error": "invalid_client"}, Failure.MISCONFIGURED),
        (400, {"error": "unauthorized_client"}, Failure.MISCONFIGURED),
        (400, {"error": "unsupported_grant_type"}, Failure.INVALID_REQUEST),
        (200, {"token_type": "Bearer"}, Failure.INVALID_REQUEST),  # an answer without a token
        # The description is free text for people: it never decides the class.
        (400, {"error": "invalid_request", "error_description": "invalid_grant"},
         Failure.INVALID_REQUEST),
    ],
)
def test_error_bodies_are_classified_on_the_error_code(
    status: int, body: dict[str, Any], kind: Failure
) -> None:
    assert classify(status, body) is kind


def test_kinds_keep_the_strings_metrics_and_audit_reasons_carry() -> None:
    assert [str(kind) for kind in Failure] == [
        "transient", "invalid_grant", "invalid_scope", "misconfigured", "invalid_request"
    ]
    assert Failure.TRANSIENT == "transient"
    assert "upstream_" + Failure.TRANSIENT == "upstream_transient"
    assert f"{Failure.INVALID_GRANT}" == "invalid_grant"


def test_the_error_names_its_kind_and_never_the_description() -> None:
    error = GoogleError(Failure.INVALID_GRANT, error="invalid_grant", status=400)
    assert error.kind is Failure.INVALID_GRANT
    assert str(error) == "google invalid_grant: invalid_grant (status 400)"
