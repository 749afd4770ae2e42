"""The OpenAPI document is valid 3.1 and real answers match it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config


def resolve(node: Any, spec: dict[str, Any]) -> Any:
    """Inline every local $ref."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, spec)
        return {k: resolve(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, spec) for v in node]
    return node


def check(spec: dict[str, Any], path: str, method: str, response: TestResponse) -> None:
    """Validate a real answer against the document's schema for its status."""
    described = spec["paths"][path][method]["responses"][str(response.status_code)]
    schema = resolve(described["content"]["application/json"]["schema"], spec)
    errors = list(Draft202012Validator(schema).iter_errors(response.json))
    assert not errors, (response.status_code, response.json, errors[0].message)


def test_document_is_valid_and_answers_match_it(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World],
) -> None:
    app = make_app(**broker_config(emulator, API_RATE_LIMIT="12/minute"))
    world = make_world(app=app)
    spec = app.test_client().get("/api/v1/openapi.json").json
    validate(spec)
    token = "/api/v1/token"
    bodies: list[tuple[dict[str, Any] | None, dict[str, str] | None]] = [
        ({"user": world.user.email}, None),
        ({"user": world.user.email, "extra": 1}, None),
        ({"user": "nobody@x.test"}, None),
        ({"user": world.user.email, "scopes": ["gmail.send"]}, None),
        ({"user": world.user.email, "scopes": ["gmail.readonly"]},
         {"Authorization": "Basic eDp5"}),
    ]
    statuses = set()
    for body, headers in bodies:
        response = world.token(body, headers=headers)
        statuses.add(response.status_code)
        check(spec, token, "post", response)
    emulator.revoke_account(world.user.email)
    world.token({"user": world.user.email, "min_ttl": 3000})  # stored token still valid
    emulator.fault("token", status=503, count=-1)
    world.token({"user": world.user.email, "rejected_token": "ya29.dead"})
    listed = app.test_client().get("/api/v1/connections", headers={"Authorization": world.auth})
    check(spec, "/api/v1/connections", "get", listed)
    bad = app.test_client().get("/api/v1/connections?limit=0",
                                headers={"Authorization": world.auth})
    check(spec, "/api/v1/connections", "get", bad)
    for _ in range(10):
        response = world.token()
        statuses.add(response.status_code)
        check(spec, token, "post", response)
    assert {200, 400, 401, 403, 404, 429} <= statuses
    for code in ("400", "401", "403", "404", "409", "429", "500", "503"):
        assert code in spec["paths"][token]["post"]["responses"]


def test_refusals_of_each_class_match_the_document(world: World,
                                                   emulator: EmulatorControls) -> None:
    spec = world.app.test_client().get("/api/v1/openapi.json").json
    emulator.revoke_account(world.user.email)
    reauth = world.token()
    assert reauth.status_code == 409
    check(spec, "/api/v1/token", "post", reauth)
    other = world.add_client(["gmail.readonly"])
    world.client_id, world.client_secret = other
    check(spec, "/api/v1/token", "post", world.token())
