"""private_key_jwt clients (RFC 7523 §2.2): no shared secret, single-use assertions per endpoint."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from broker.client import BrokerClient, InvalidRequestError
from broker.db import get_db
from broker.models import AuditEvent, Tenant
from broker.tenancy import assertions, clients
from tests.integration.api.test_workload import EXCHANGE, GRANT, JWT, add_rule
from tests.plugins.world import PUBLIC_URL, READONLY, World, basic

TOKEN = "/api/v1/token"
TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _client(world: World, **auth: Any) -> str:
    with get_db(world.app).transaction() as session:
        tenant = session.get(Tenant, world.tenant.id)
        assert tenant is not None
        issued = clients.create_client(
            session, tenant, name=f"keyed-{uuid.uuid4().hex[:6]}", scopes=[READONLY],
            auth=clients.ClientAuth(method="private_key_jwt", **auth))
    assert issued.client_secret == ""  # nothing shared to leak or rotate
    return issued.client_id


def _sign(key: ECKey, client_id: str, aud: str, now: dt.datetime, **claims: Any) -> str:
    at = int(now.timestamp())
    body = {"iss": client_id, "sub": client_id, "aud": aud, "iat": at, "exp": at + 120,
            "jti": secrets.token_urlsafe(12), **claims}
    return jwt.encode({"alg": "ES256", "kid": key.thumbprint()}, body, key)


def _refused(world: World) -> list[str | None]:
    with get_db(world.app).transaction(write=False) as session:
        return list(session.scalars(select(AuditEvent.reason).where(
            AuditEvent.action == "client.authenticate", AuditEvent.tenant_id == world.tenant.id)
            .order_by(AuditEvent.seq)))


def test_a_keyed_client_gets_a_token_and_its_assertions_serve_once_at_one_endpoint(
    world: World,
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client_id = _client(world, public_key_pem=pem)
    key = ECKey.import_key(private)
    moment = [dt.datetime.now(dt.UTC)]
    world.app.extensions["broker.clock"] = lambda: moment[0]
    http = world.app.test_client()

    def post(assertion: str) -> Any:
        return http.post(TOKEN, json={"user": world.user.email, "client_assertion_type": TYPE,
                                      "client_assertion": assertion},
                         environ_base={"REMOTE_ADDR": "203.0.113.7"})

    signed = _sign(key, client_id, PUBLIC_URL + TOKEN, moment[0])
    first = post(signed)
    assert first.status_code == 200, first.json
    assert first.json["access_token"]
    replayed = post(signed)
    assert replayed.status_code == 401 and replayed.json["error"] == "invalid_client"
    cases = [
        ("another endpoint", _sign(key, client_id, PUBLIC_URL + EXCHANGE, moment[0]),
         "wrong_audience"),
        ("the issuer identifier", _sign(key, client_id, PUBLIC_URL, moment[0]),
         "wrong_audience"),
        ("over five minutes", _sign(key, client_id, PUBLIC_URL + TOKEN, moment[0],
                                    exp=int(moment[0].timestamp()) + 900), "lifetime_too_long"),
        ("expired", _sign(key, client_id, PUBLIC_URL + TOKEN, moment[0] - dt.timedelta(hours=1)),
         "expired"),
    ]
    for name, assertion, _ in cases:
        answer = post(assertion)
        assert answer.status_code == 401, name
        assert assertion not in answer.get_data(as_text=True)
    assert _refused(world) == ["replayed"] + [reason for _, _, reason in cases]
    # One method per client: a Basic secret and an assertion together are refused.
    both = http.post(TOKEN, json={"user": world.user.email, "client_assertion_type": TYPE,
                                  "client_assertion": _sign(key, client_id, PUBLIC_URL + TOKEN,
                                                            moment[0])},
                     headers={"Authorization": world.auth})
    assert both.status_code == 401
    # The used id is kept while the assertion lives, then the worker forgets it.
    assert assertions.purge_assertions(world.app) == 0
    moment[0] += dt.timedelta(minutes=10)
    assert assertions.purge_assertions(world.app) == 1


def test_a_jwks_url_client_authenticates_at_the_exchange(world: World) -> None:
    emulator = world.emulator
    name = f"keys{uuid.uuid4().hex[:6]}"
    emulator.make_issuer(name, alg="ES256")
    # The client publishes its keys at a URL; here the emulator issuer's JWKS stands in.
    client_id = _client(world, jwks_url=emulator.issuer_url(name) + "/jwks")
    add_rule(world, emulator.issuer_url("github"), client_id=client_id)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    own = emulator.mint(name, iss=client_id, sub=client_id, aud=PUBLIC_URL + EXCHANGE,
                        iat=now, exp=now + 60)
    form = {"grant_type": GRANT, "subject_token": emulator.mint("github", aud=PUBLIC_URL),
            "subject_token_type": JWT, "login_hint": world.user.email,
            "client_assertion_type": TYPE, "client_assertion": own}
    ok = world.app.test_client().post(EXCHANGE, data=form)
    assert ok.status_code == 200, ok.json
    handed = _handout_credential(world)
    assert handed["via"] == "workload" and handed["auth_method"] == "private_key_jwt"
    # Another client's credentials beside the rule's subject token: refused, audited.
    form.pop("client_assertion"), form.pop("client_assertion_type")
    form["subject_token"] = emulator.mint("github", aud=PUBLIC_URL)
    other = world.app.test_client().post(EXCHANGE, data=form,
                                         headers={"Authorization": basic(world.client_id,
                                                                         world.client_secret)})
    assert other.status_code == 403 and other.json["error"] == "forbidden"


def _handout_credential(world: World) -> dict[str, Any]:
    with get_db(world.app).transaction(write=False) as session:
        details = session.scalars(select(AuditEvent.details).where(
            AuditEvent.action == "token.handout", AuditEvent.outcome == "ok")).one()
    return dict(details)


def test_the_sdk_signs_with_a_key_file_and_rereads_a_projected_token(
    world: World, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "job-key.pem"
    key_file.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client_id = _client(world, public_key_pem=pem)
    http = httpx.Client(transport=httpx.WSGITransport(app=world.app, remote_addr="203.0.113.7"))
    keyed = BrokerClient(PUBLIC_URL, client_id, private_key_file=key_file, http=http)
    assert keyed.token(world.user.email).access_token
    assert keyed.token(world.user.email).access_token  # a fresh assertion each call
    emulator = world.emulator
    add_rule(world, emulator.issuer_url("kubernetes"),
             subject="system:serviceaccount:jobs:mailer")
    token_file = tmp_path / "token"
    job = BrokerClient.from_workload_token(PUBLIC_URL, token_file, world.user.email, http=http)
    token_file.write_text(emulator.mint("kubernetes", aud=PUBLIC_URL))
    assert READONLY in job.token().scopes
    # The kubelet rotates the file in place: the next exchange reads the new token.
    token_file.write_text(emulator.mint("kubernetes", aud="https://kubernetes.default.svc"))
    with pytest.raises(InvalidRequestError):
        job.token()
