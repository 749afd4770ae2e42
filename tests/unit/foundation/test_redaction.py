"""The log redaction filter removes query strings and anything token-shaped."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from broker.logging import JsonFormatter, RedactionFilter, redact

CANARIES = [
    "ya29.a0AfH6SMBcanaryaccesstoken",
    "1//0gCanaryRefreshToken-abc",
    "4/0AX4XfWhCanaryCode",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
]


@pytest.mark.parametrize("secret", CANARIES)
def test_token_shapes_are_removed(secret: str) -> None:
    assert secret not in redact(f"refreshed with {secret} done")
    assert quote(secret, safe="") not in redact(f"GET /cb?code={quote(secret, safe='')} 200")


def test_query_strings_go_and_paths_stay() -> None:
    line = redact('"GET /auth/callback?state=abc&code=4%2Fxyz HTTP/1.1" 303')
    assert "/auth/callback" in line and "state=abc" not in line and "xyz" not in line


def test_key_value_secrets_are_removed() -> None:
    for text in ('client_secret="s3cr3t-value"', "password=hunter2", "code_verifier: abcdef",
                 "Authorization: Basic Y2xpZW50OnNlY3JldA==", "Bearer abc.def"):
        out = redact(text)
        for part in ("s3cr3t-value", "hunter2", "abcdef", "Y2xpZW50OnNlY3JldA==", "abc.def"):
            assert part not in out


def test_filter_rewrites_records_and_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s", (CANARIES[0],), None)
    try:
        raise ValueError(f"bad {CANARIES[1]}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactionFilter().filter(record)
    line = JsonFormatter().format(record)
    assert CANARIES[0] not in line and CANARIES[1] not in line
    assert json.loads(line)["level"] == "ERROR"
