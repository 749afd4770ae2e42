"""Jobs without secrets (issue 15): the token exchange with workload JWTs, each refusal audited."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from werkzeug.test import TestResponse

from broker.db import get_db
from broker.models import AuditEvent, Tenant
from broker.workload import trusts
from tests.factories import make_user
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import PUBLIC_URL, READONLY, World, connect

EXCHANGE = "/api/v1/oauth/token"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def exchange(app: Flask, token: str, user: str, **extra: str) -> TestResponse:
    """POST the exchange form as a job would."""
    form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT,
            "login_hint": user, **extra}
    return app.test_client().post(EXCHANGE, data=form, environ_base={"REMOTE_ADDR": "203.0.113.7"})


def add_rule(world: World, issuer: str, *, client_id: str | None = None, **spec: Any) -> str:
    """Add a trust rule for the world's client (any subject, its user, unless told)."""
    spec.setdefault("any_subject", "subject" not in spec)
    if not spec.get("any_user"):
        spec.setdefault("users", (world.user.email,))
    with get_db(world.app).transaction() as session:
        tenant = session.get(Tenant, world.tenant.id)
        assert tenant is not None
        row = trusts.add_trust(
            session, tenant, trusts.TrustSpec(client_id=client_id or world.client_id,
                                              issuer=issuer, **spec),
            default_audience=PUBLIC_URL, now=dt.datetime.now(dt.UTC),
        )
        return str(row.id)


def refusals(app: Flask, tenant_id: uuid.UUID | None, action: str) -> list[str | None]:
    """Return the reasons of a tenant's denied events of an action, oldest first."""
    with get_db(app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent.reason).where(AuditEvent.tenant_id == tenant_id,
                                            AuditEvent.action == action,
                                            AuditEvent.outcome == "denied")
            .order_by(AuditEvent.seq)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict[str, Any], claims: dict[str, Any], key: Any = None) -> str:
    """Return a JWT signed by `key`: unsigned when None, HMAC when bytes (joserfc refuses both)."""
    if key is None or isinstance(key, bytes):
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        mac = hmac.new(key, signing.encode(), hashlib.sha256).digest() if key else b""
        return f"{signing}.{_b64(mac)}"
    return jwt.encode(header, claims, key)


def test_a_rule_pinning_the_repository_id_admits_42_and_not_43(world: World) -> None:
    emulator, github = world.emulator, world.emulator.issuer_url("github")
    add_rule(world, github, claims=(("repository_id", "42"),))
    ok = exchange(world.app, emulator.mint("github", aud=PUBLIC_URL), world.user.email)
    assert ok.status_code == 200, ok.json
    body = ok.json or {}
    assert body["access_token"] and body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["scope"] == READONLY and "refresh_token" not in body
    assert ok.headers["Cache-Control"] == "no-store"
    # The same repository name, another repository (renamed, or re-created by someone else).
    other = emulator.mint("github", aud=PUBLIC_URL, repository="acme/deploy", repository_id="43")
    refused = exchange(world.app, other, world.user.email)
    assert refused.status_code == 400
    assert refused.json == {"error": "invalid_request",
                            "error_description": "subject token rejected"}
    assert refusals(world.app, world.tenant.id, "workload.exchange") == [
        "claim_mismatch:repository_id"]
    with get_db(world.app).transaction(write=False) as session:
        handed = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "token.handout", AuditEvent.outcome == "ok")).one()
    assert handed.actor_id == world.client_id
    assert handed.details["via"] == "workload" and handed.details["issuer"] == github
    assert handed.details["subject"] == "repo:acme/deploy:ref:refs/heads/main"


def test_each_validation_case(world: World, make_world: Callable[..., World]) -> None:
    app, emulator = world.app, world.emulator
    github, k8s = emulator.issuer_url("github"), emulator.issuer_url("kubernetes")
    add_rule(world, github, claims=(("repository_id", "42"),), max_lifetime=600)
    add_rule(world, k8s, claims=(("kubernetes.io.namespace", "jobs"),))
    liar = f"liar{uuid.uuid4().hex[:6]}"
    emulator.make_issuer(liar, discovery_issuer="https://token.actions.githubusercontent.com")
    add_rule(world, emulator.issuer_url(liar))
    now = int(time.time())
    public = RSAKey.import_key(_public_jwk(emulator, "github"))
    hmac_key = public.as_pem(private=False)  # the confusion attack: the public key as a secret
    stranger = RSAKey.import_key(rsa.generate_private_key(65537, 2048))
    base = {"iss": github, "sub": "repo:acme/deploy:ref:refs/heads/main", "aud": PUBLIC_URL,
            "repository_id": "42", "iat": now, "exp": now + 300}
    other = make_user(app, world.tenant)
    connect(app, emulator, other, [READONLY])
    cases: list[tuple[str, str, str | None]] = [
        ("aud as a string", emulator.mint("github", aud=PUBLIC_URL), None),
        ("aud as a list", emulator.mint("github", aud=["x", PUBLIC_URL]), None),
        ("aud wrong", emulator.mint("github", aud="https://github.com/acme"), "wrong_audience"),
        ("no exp", emulator.mint("github", aud=PUBLIC_URL, exp=None), "no_exp"),
        ("lifetime over the rule's", emulator.mint("github", aud=PUBLIC_URL, iat=now,
                                                   exp=now + 3600), "lifetime_too_long"),
        ("iat in the future", emulator.mint("github", aud=PUBLIC_URL, iat=now + 600),
         "issued_in_future"),
        ("alg none", forged({"alg": "none", "kid": public.kid}, base), "algorithm_not_allowed"),
        ("HS256 keyed with the public key", forged({"alg": "HS256", "kid": public.kid}, base,
                                                   hmac_key), "algorithm_not_allowed"),
        ("unknown kid", forged({"alg": "RS256", "kid": "made-up"}, base, stranger),
         "unknown_kid"),
        ("right kid, another key", forged({"alg": "RS256", "kid": public.kid}, base, stranger),
         "bad_signature"),
        ("iss differs from discovery", emulator.mint(liar, aud=PUBLIC_URL),
         "discovery_issuer_mismatch"),
        ("the default service account", emulator.mint(
            "kubernetes", aud=PUBLIC_URL, sub="system:serviceaccount:jobs:default"),
         "default_service_account"),
        ("a projected service account token", emulator.mint("kubernetes", aud=PUBLIC_URL), None),
    ]
    expected: list[str] = []
    for name, token, reason in cases:
        answer = exchange(app, token, world.user.email)
        assert answer.status_code == (200 if reason is None else 400), (name, answer.json)
        if reason is not None:
            assert answer.json == {"error": "invalid_request",
                                   "error_description": "subject token rejected"}, name
            expected.append(reason)
        assert token not in answer.get_data(as_text=True)
    assert refusals(app, world.tenant.id, "workload.exchange") == expected
    # A user outside the rule's users: a policy refusal, audited as the hand-out's.
    outside = exchange(app, emulator.mint("github", aud=PUBLIC_URL), other.email)
    assert outside.status_code == 403 and (outside.json or {})["error"] == "forbidden"
    assert refusals(app, world.tenant.id, "token.handout") == ["forbidden"]
    # Rules of two tenants matching one token: refused, audited in both, logged as an error.
    second = make_world(app=app)
    add_rule(second, k8s)
    both = exchange(app, emulator.mint("kubernetes", aud=PUBLIC_URL), world.user.email)
    assert both.status_code == 400
    for tenant_id in (world.tenant.id, second.tenant.id):
        assert refusals(app, tenant_id, "workload.exchange")[-1] == "ambiguous_rules"
    with get_db(app).transaction(write=False) as session:
        audited = session.scalars(select(AuditEvent.details).where(
            AuditEvent.action == "workload.exchange")).all()
    assert not any(token in json.dumps(d) for d in audited for _, token, _ in cases)


def _public_jwk(emulator: EmulatorControls, name: str) -> dict[str, Any]:
    keys = emulator.http.get(f"/_emulator/issuers/{name}/jwks").json()["keys"]
    return dict(keys[0])


def test_an_unknown_kid_flood_fetches_the_jwks_at_most_once_per_cooldown(world: World) -> None:
    app, emulator = world.app, world.emulator
    name = f"flood{uuid.uuid4().hex[:6]}"
    emulator.make_issuer(name)
    issuer = emulator.issuer_url(name)
    add_rule(world, issuer)
    moment = [dt.datetime.now(dt.UTC)]
    app.extensions["broker.clock"] = lambda: moment[0]
    stranger = RSAKey.import_key(rsa.generate_private_key(65537, 2048))

    def flood(count: int) -> None:
        for _ in range(count):
            at = int(moment[0].timestamp())
            token = forged({"alg": "RS256", "kid": secrets.token_hex(8)},
                           {"iss": issuer, "sub": "workload", "aud": PUBLIC_URL, "iat": at,
                            "exp": at + 300}, stranger)
            assert exchange(app, token, world.user.email).status_code in (400, 429)

    assert exchange(app, emulator.mint(name, aud=PUBLIC_URL), world.user.email).status_code == 200
    fetched = emulator.issuer(name)["jwks_fetches"]
    flood(25)
    assert emulator.issuer(name)["jwks_fetches"] == fetched + 1
    moment[0] += dt.timedelta(seconds=app.config["BROKER"].JWKS_COOLDOWN)
    flood(25)
    assert emulator.issuer(name)["jwks_fetches"] == fetched + 2
    # A rotated key is found by the one refetch its new kid causes.
    moment[0] += dt.timedelta(seconds=app.config["BROKER"].JWKS_COOLDOWN)
    emulator.rotate_issuer_key(name)
    at = int(moment[0].timestamp())
    fresh = emulator.mint(name, aud=PUBLIC_URL, iat=at)
    # The flood counted against this address's failure limit (30/minute): another address.
    answer = world.app.test_client().post(EXCHANGE, data={
        "grant_type": GRANT, "subject_token": fresh, "subject_token_type": JWT,
        "login_hint": world.user.email}, environ_base={"REMOTE_ADDR": "203.0.113.8"})
    assert answer.status_code == 200, answer.json


def test_exchange_parameters_are_checked(world: World) -> None:
    add_rule(world, world.emulator.issuer_url("github"))
    token = world.emulator.mint("github", aud=PUBLIC_URL)
    cases: list[tuple[dict[str, str], int, str]] = [
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"resource": "https://www.googleapis.com/"}, 400, "invalid_target"),
        ({"audience": "https://elsewhere.example"}, 400, "invalid_target"),
        ({"actor_token": token, "actor_token_type": JWT}, 400, "invalid_request"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, 400,
         "invalid_request"),
        ({"resource": "https://gmail.googleapis.com/", "audience": PUBLIC_URL,
          "scope": "gmail.readonly", "min_ttl": "60"}, 200, ""),
    ]
    for extra, status, error in cases:
        answer = exchange(world.app, token, world.user.email, **extra)
        assert answer.status_code == status, (extra, answer.json)
        assert (answer.json or {}).get("error", "") == error, extra
    proxy = exchange(world.app, token, world.user.email,
                     requested_token_type="urn:broker:token-type:proxy")
    assert proxy.status_code == 200, proxy.json
    assert proxy.json["issued_token_type"] == "urn:broker:token-type:proxy"
    assert proxy.json["access_token"].startswith("bpt1.")  # a proxy token, no Google token
    profile = world.app.test_client().get(
        "/proxy/gmail/v1/users/me/profile",
        headers={"Authorization": "Bearer " + proxy.json["access_token"]}, buffered=True)
    assert profile.status_code == 200 and profile.json["emailAddress"] == world.user.email
    as_json = world.app.test_client().post(EXCHANGE, json={"grant_type": GRANT})
    assert as_json.status_code == 415
