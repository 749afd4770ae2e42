"""The pure checks of workload tokens and client assertions: plain values and `now` in."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from broker.tenancy.assertions import claims_problem
from broker.workload import Rule, check_claims, claim_at, scalar_text

NOW = 1_800_000_000.0
AUD = "https://broker.example"
K8S = {"kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "mailer"}},
       "flat.key": "x", "repository_id": "42", "run": 7, "private": True}


def _rule(**fields: Any) -> Rule:
    values: dict[str, Any] = {"id": uuid.uuid4(), "tenant_id": uuid.uuid4(), "client_id": "cl_x",
                              "issuer": "https://issuer.example", "audiences": (AUD,),
                              "subject": None, "claims": {}, "users": ("*",),
                              "max_lifetime": 600, **fields}
    return Rule(**values)


@pytest.mark.parametrize(("path", "value"), [
    ("kubernetes.io.namespace", "jobs"), ("kubernetes.io.serviceaccount.name", "mailer"),
    ("flat.key", "x"), ("repository_id", "42"), ("run", "7"), ("private", "true"),
    ("kubernetes.io.pod", None), ("kubernetes", None), ("repository_id.x", None),
    ("kubernetes.io", None),  # an object matches no exact value
])
def test_claim_at_reads_dotted_paths_whose_keys_may_hold_dots(path: str, value: Any) -> None:
    assert scalar_text(claim_at(K8S, path)) == value


def _claims(**over: Any) -> dict[str, Any]:
    return {"aud": AUD, "sub": "system:serviceaccount:jobs:mailer", "iat": NOW - 10,
            "exp": NOW + 300, **K8S, **over}


@pytest.mark.parametrize(("rule", "claims", "problem"), [
    (_rule(), _claims(), None),
    (_rule(), _claims(aud=["other", AUD]), None),
    (_rule(), _claims(aud="other"), "wrong_audience"),
    (_rule(), _claims(exp=None), "no_exp"),
    (_rule(), _claims(exp=NOW - 120), "expired"),
    (_rule(), _claims(exp=NOW - 30), None),  # within the leeway
    (_rule(), _claims(iat=None), "no_iat"),
    (_rule(), _claims(iat=NOW + 120), "issued_in_future"),
    (_rule(), _claims(nbf=NOW + 120), "issued_in_future"),
    (_rule(), _claims(iat=NOW, exp=NOW + 601), "lifetime_too_long"),
    (_rule(), _claims(iat=True), "no_iat"),  # a boolean is no time
    (_rule(subject="system:serviceaccount:jobs:other"), _claims(), "wrong_subject"),
    (_rule(), _claims(sub="system:serviceaccount:jobs:default"), "default_service_account"),
    (_rule(subject="system:serviceaccount:jobs:default"),
     _claims(sub="system:serviceaccount:jobs:default"), None),
    (_rule(claims={"kubernetes.io.namespace": "jobs", "private": "true", "run": "7"}),
     _claims(), None),
    (_rule(claims={"repository_id": "42"}), _claims(repository_id=42), None),
    (_rule(claims={"repository_id": "42"}), _claims(repository_id="43"),
     "claim_mismatch:repository_id"),
    (_rule(claims={"kubernetes.io": "jobs"}), _claims(), "claim_mismatch:kubernetes.io"),
])
def test_check_claims(rule: Rule, claims: dict[str, Any], problem: str | None) -> None:
    claims = {k: v for k, v in claims.items() if v is not None}
    assert check_claims(rule, claims, NOW, 60) == problem


ENDPOINT = AUD + "/api/v1/token"


@pytest.mark.parametrize(("claims", "problem"), [
    ({"aud": ENDPOINT, "exp": NOW + 120, "iat": NOW, "jti": "a"}, None),
    ({"aud": [ENDPOINT], "exp": NOW + 120, "jti": "a"}, None),
    ({"aud": AUD, "exp": NOW + 120, "jti": "a"}, "wrong_audience"),
    ({"aud": ENDPOINT, "jti": "a"}, "no_exp"),
    ({"aud": ENDPOINT, "exp": NOW + 900, "jti": "a"}, "lifetime_too_long"),
    ({"aud": ENDPOINT, "exp": NOW + 200, "iat": NOW - 200, "jti": "a"}, "lifetime_too_long"),
    ({"aud": ENDPOINT, "exp": NOW - 61, "jti": "a"}, "expired"),
    ({"aud": ENDPOINT, "exp": NOW + 60, "nbf": NOW + 61, "jti": "a"}, "not_yet_valid"),
    ({"aud": ENDPOINT, "exp": NOW + 60}, "no_jti"),
    ({"aud": ENDPOINT, "exp": "soon", "jti": "a"}, "exp_not_a_number"),
])
def test_assertion_claims(claims: dict[str, Any], problem: str | None) -> None:
    assert claims_problem(claims, ENDPOINT, NOW, 60) == problem
