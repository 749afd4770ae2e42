"""Workload identity issuers: a GitHub Actions and a Kubernetes stand-in, and any made on demand.

Each issuer lives at `{emulator}/_emulator/issuers/<name>` (that URL is its `iss`), publishes
`…/.well-known/openid-configuration` and `…/jwks`, and mints tokens on `POST …/mint` from a
JSON object of claims merged over its preset's defaults (a claim given as null is left out).
Times come from the emulator's clock; JWKS and discovery fetches are counted per issuer.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from broker.emulator.context import get_emulator, issuer, json_response
from broker.emulator.controls import loopback_only

EXTENSION = "emulator_issuers"
PRESETS: dict[str, dict[str, Any]] = {
    # The claims GitHub Actions puts in a job's OIDC token (a push to main of acme/deploy).
    "github": {
        "lifetime": 300,
        "claims": {
            "sub": "repo:acme/deploy:ref:refs/heads/main", "aud": "https://github.com/acme",
            "ref": "refs/heads/main", "ref_type": "branch", "sha": "4f1c0ffee" * 4 + "abcd",
            "repository": "acme/deploy", "repository_id": "42", "repository_owner": "acme",
            "repository_owner_id": "1001", "repository_visibility": "private",
            "run_id": "7001", "run_number": "12", "run_attempt": "1", "actor": "octocat",
            "actor_id": "2001", "event_name": "push", "workflow": "deploy",
            "job_workflow_ref": "acme/deploy/.github/workflows/deploy.yml@refs/heads/main",
            "environment": "production", "runner_environment": "github-hosted",
        },
    },
    # A projected service account token (the kubelet's default lifetime is one hour).
    "kubernetes": {
        "lifetime": 3600,
        "claims": {
            "sub": "system:serviceaccount:jobs:mailer", "aud": ["https://kubernetes.default.svc"],
            "kubernetes.io": {
                "namespace": "jobs",
                "serviceaccount": {"name": "mailer", "uid": "7b3c1d9e-0000-4000-8000-000000000001"},
                "pod": {"name": "mailer-5d8f7", "uid": "7b3c1d9e-0000-4000-8000-000000000002"},
            },
        },
    },
    "plain": {"lifetime": 600, "claims": {"sub": "workload"}},
}
ALGORITHMS = ("RS256", "ES256")
MAX_KEYS = 3


@dataclass
class Issuer:
    """One issuer: its preset, keys (newest last) and fetch counters."""

    name: str
    preset: str
    alg: str = "RS256"
    discovery_issuer: str | None = None  # a test's lie: the document names another issuer
    keys: list[RSAKey | ECKey] = field(default_factory=list)
    jwks_fetches: int = 0
    discovery_fetches: int = 0

    def rotate(self) -> str:
        """Make a new key current; keep the last few published."""
        kid = secrets.token_hex(12)
        key: RSAKey | ECKey = (
            RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": self.alg})
            if self.alg == "RS256"
            else ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig",
                                                         "alg": self.alg}))
        self.keys.append(key)
        del self.keys[:-MAX_KEYS]
        return kid

    def describe(self) -> dict[str, Any]:
        """Return what the control answers about the issuer."""
        return {"name": self.name, "preset": self.preset, "alg": self.alg,
                "kids": [str(k.kid) for k in self.keys], "jwks_fetches": self.jwks_fetches,
                "discovery_fetches": self.discovery_fetches}


class Issuers:
    """Every issuer of one emulator app; keys are made on first use (RSA keys take a while)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issuers = {name: Issuer(name, name) for name in ("github", "kubernetes")}

    def get(self, name: str) -> Issuer:
        """Return an issuer with at least one key, or raise KeyError."""
        with self.lock:
            found = self.issuers[name]
            if not found.keys:
                found.rotate()
            return found


def _board() -> Issuers:
    board: Issuers = current_app.extensions[EXTENSION]
    return board


def _attach(setup: BlueprintSetupState) -> None:
    setup.app.extensions.setdefault(EXTENSION, Issuers())


bp = Blueprint("emulator_issuers", __name__, url_prefix="/_emulator/issuers")
bp.record_once(_attach)
bp.before_request(loopback_only)


def _error(description: str, status: int = 400) -> Response:
    return json_response({"error": "bad_control", "error_description": description}, status)


def _url(name: str) -> str:
    return f"{issuer()}/_emulator/issuers/{name}"


def _found(name: str) -> Issuer | Response:
    try:
        return _board().get(name)
    except KeyError:
        return _error(f"no issuer {name[:40]!r}", 404)


@bp.route("", methods=["GET", "POST"])
def collection() -> Response:
    """List the issuers, or make one: {"name", "preset"?, "alg"?, "discovery_issuer"?}."""
    board = _board()
    if request.method == "GET":
        with board.lock:
            return json_response({"issuers": [i.describe() for i in board.issuers.values()]})
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error("the body must be a JSON object")
    name, preset = body.get("name"), body.get("preset", "plain")
    alg, lie = body.get("alg", "RS256"), body.get("discovery_issuer")
    if not isinstance(name, str) or not name.isascii() or not name.replace("-", "").isalnum():
        return _error("name is letters, digits and dashes")
    if preset not in PRESETS or alg not in ALGORITHMS:
        return _error(f"preset is one of {', '.join(PRESETS)}; alg RS256 or ES256")
    if lie is not None and not isinstance(lie, str):
        return _error("discovery_issuer must be a string")
    made = Issuer(name, preset, alg, lie)
    made.rotate()
    with board.lock:
        board.issuers[name] = made
    return json_response({**made.describe(), "issuer": _url(name)}, 201)


@bp.get("/<name>")
def show(name: str) -> Response:
    """Describe an issuer: its kids and how often its JWKS and discovery were fetched."""
    found = _found(name)
    if isinstance(found, Response):
        return found
    return json_response({**found.describe(), "issuer": _url(name)})


@bp.get("/<name>/.well-known/openid-configuration")
def discovery(name: str) -> Response:
    """Publish the issuer's discovery document, as GitHub's and a cluster's do."""
    found = _found(name)
    if isinstance(found, Response):
        return found
    with _board().lock:
        found.discovery_fetches += 1
    base = _url(name)
    document = {
        "issuer": found.discovery_issuer or base, "jwks_uri": f"{base}/jwks",
        "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [found.alg],
    }
    return json_response(document, headers={"Cache-Control": "public, max-age=3600"})


@bp.get("/<name>/jwks")
def jwks(name: str) -> Response:
    """Publish the issuer's public keys, newest first."""
    found = _found(name)
    if isinstance(found, Response):
        return found
    with _board().lock:
        found.jwks_fetches += 1
        keys = [dict(k.as_dict(private=False)) for k in reversed(found.keys)]
    return json_response({"keys": keys}, headers={"Cache-Control": "public, max-age=3600"})


@bp.post("/<name>/mint")
def mint(name: str) -> Response:
    """Sign the preset's claims merged with the body's: {"token": "<JWT>"}."""
    found = _found(name)
    if isinstance(found, Response):
        return found
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return _error("the body must be a JSON object of claims")
    preset = PRESETS[found.preset]
    issued = body.get("iat")
    issued = issued if isinstance(issued, int) and not isinstance(issued, bool) else (
        get_emulator().state.now())
    claims: dict[str, Any] = {"iss": _url(name), **preset["claims"], "iat": issued,
                              "nbf": issued, "exp": issued + int(preset["lifetime"]),
                              "jti": secrets.token_hex(8)}
    claims.update(body)
    claims = {k: v for k, v in claims.items() if v is not None}
    with _board().lock:
        key = found.keys[-1]
    token = jwt.encode({"alg": found.alg, "kid": str(key.kid), "typ": "JWT"}, claims, key)
    return json_response({"token": token, "claims": claims})


@bp.post("/<name>/keys/rotate")
def rotate(name: str) -> Response:
    """Make a new signing key current (the previous ones stay published)."""
    found = _found(name)
    if isinstance(found, Response):
        return found
    with _board().lock:
        kid = found.rotate()
    return json_response({"kid": kid, "published": [str(k.kid) for k in found.keys]})
