"""Property-based fuzzing of /api/v1 from its own OpenAPI document (schemathesis, in-process).

At least 3,000 generated requests, valid and invalid, with valid, wrong and missing
credentials: no 500, no status, header or body outside the document, every 4xx with an `error`.
The documented paths are also bent (doubled slashes, dot segments, trailing slashes): still no
5xx, and every answer JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.plugins.world import World, basic

REQUESTS = 3_000
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_headers_conformance, response_schema_conformance, negative_data_rejection,
]


def _every_4xx_has_an_error_code(ctx: Any, response: Any, case: Any) -> bool | None:
    if 400 <= response.status_code < 500:
        body = json.loads(response.content or b"null")
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
            response.status_code, response.content[:200])
    return None


class Fuzzer:
    """Run generated cases of every operation against one app, counting requests."""

    def __init__(self, app: Flask, document: dict[str, Any]) -> None:
        self.app = app
        self.schema = schemathesis.openapi.from_dict(document)
        self.schema.app = app  # requests go through the WSGI app, never a socket
        self.requests = 0
        self.derandomize = True  # CI runs the same cases every time

    def operations(self) -> Iterator[Any]:
        for result in self.schema.get_all_operations():
            yield result.ok()

    def run(self, operation: Any, mode: GenerationMode, auth: str | None, examples: int) -> None:
        headers = {"Authorization": auth} if auth else {}

        @settings(
            max_examples=examples, deadline=None, database=None,
            phases=[Phase.explicit, Phase.generate], verbosity=Verbosity.quiet,
            derandomize=self.derandomize,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            if auth is None:
                case.headers = {k: v for k, v in (case.headers or {}).items()
                                if k.lower() != "authorization"}
            else:
                case.headers = {**(case.headers or {}), **headers}
            self.requests += 1
            response = case.call(app=self.app)
            case.validate_response(response, checks=CHECKS,
                                   additional_checks=[_every_4xx_has_an_error_code])

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            if mode is not GenerationMode.NEGATIVE:
                raise


def served_document(app: Flask) -> dict[str, Any]:
    answer = app.test_client().get("/api/v1/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.get_json()
    return document


def fuzz_all(app: Flask, document: dict[str, Any], world: World) -> Fuzzer:
    """Fuzz every operation × credentials × generation mode, ≥ REQUESTS requests in all."""
    fuzzer = Fuzzer(app, document)
    operations = list(fuzzer.operations())
    credentials = [world.auth, basic(world.client_id, "wrong-secret"), None]
    runs = [(op, mode, auth) for op in operations for auth in credentials
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    per_run = REQUESTS // len(runs) + 25
    for operation, mode, auth in runs:
        fuzzer.run(operation, mode, auth, per_run)
    # Small operations run out of distinct inputs early: top up on the richest one.
    token = next(op for op in operations if op.path.endswith("/token"))
    fuzzer.derandomize = False
    while fuzzer.requests < REQUESTS:
        fuzzer.run(token, GenerationMode.NEGATIVE, world.auth, REQUESTS - fuzzer.requests + 25)
    return fuzzer


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_the_api_keeps_to_its_document(make_world: Any, make_broker: Any) -> None:
    app = make_broker(API_RATE_LIMIT="off", AUTH_FAILURE_LIMIT="off")
    world = make_world(app=app)
    document = served_document(app)
    assert document.get("paths")
    fuzzer = fuzz_all(app, document, world)
    assert fuzzer.requests >= REQUESTS


SEPARATORS = ["/", "//", "///", "/./", "/../", "/%2F", "/%2E/", "/.//"]
TRAILERS = ["", "/", "//", "/.", "/..", "/./"]


@st.composite
def bent_paths(draw: st.DrawFn, documented: list[str]) -> str:
    """Return a documented /api/ path with its separators and ending bent."""
    segments = draw(st.sampled_from(documented)).removeprefix("/api/").split("/")
    joined = "".join(draw(st.sampled_from(SEPARATORS)) + segment for segment in segments)
    return "/api" + joined + draw(st.sampled_from(TRAILERS))


def test_bent_api_paths_answer_json_and_never_5xx(make_world: Any, make_broker: Any) -> None:
    app = make_broker(API_RATE_LIMIT="off", AUTH_FAILURE_LIMIT="off")
    world = make_world(app=app)
    documented = sorted(served_document(app)["paths"])
    credentials = [world.auth, basic(world.client_id, "wrong-secret"), None]
    client = app.test_client()
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path=bent_paths(documented), auth=st.sampled_from(credentials),
           method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    def bent(path: str, auth: str | None, method: str) -> None:
        seen.add(path)
        headers = {"Authorization": auth} if auth else {}
        response = client.open(path, method=method, headers=headers,
                               json={"user": world.user.email})
        label = (method, path, response.status_code)
        assert response.status_code < 500, label
        assert response.mimetype == "application/json", label
        if response.status_code >= 400:
            assert isinstance(response.json, dict) and response.json.get("error"), label

    bent()
    assert any("//" in path for path in seen) and any("/." in path for path in seen)
