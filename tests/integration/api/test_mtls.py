"""Jobs with client certificates (RFC 8705), as a trusted proxy forwards them: each case."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.emulator.pki import Issued, issue
from broker.errors import InvalidRequest
from broker.models import AuditEvent, Tenant
from broker.tenancy import clients
from broker.tls import thumbprint
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config

PROXY = "10.0.0.5"
NOW = dt.datetime.now(dt.UTC)


def _client_leaf(ca: Issued, *, cn: str = "nightly", san: list[x509.GeneralName] | None = None,
                 eku: Any = ExtendedKeyUsageOID.CLIENT_AUTH, days: int = 30,
                 start: dt.datetime | None = None) -> Issued:
    """Issue a client leaf (the emulator's issue() makes server leaves)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    begin = start or NOW - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        # X.509 order (O, then CN): RFC 4514 writes it back to front, "CN=…,O=Acme".
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin).not_valid_after(begin + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _self_signed(cn: str = "job") -> Issued:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def _sf(cert: x509.Certificate) -> str:
    return ":" + base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode() + ":"


@pytest.fixture
def mtls_world(make_app: Callable[..., Flask], emulator: EmulatorControls,
               make_world: Callable[..., World]) -> World:
    """A world whose broker believes client-certificate headers from PROXY only."""
    app = make_app(**broker_config(emulator, MTLS_PROXIES="10.0.0.0/24"))
    return make_world(app=app)


@pytest.fixture(scope="module")
def acme_ca() -> Issued:
    return issue("Acme issuing CA", ca=True)


def _cert_client(world: World, auth: clients.ClientAuth) -> str:
    with get_db(world.app).transaction() as session:
        tenant = session.get(Tenant, world.tenant.id)
        assert tenant is not None
        issued = clients.create_client(session, tenant, name=f"cert-{auth.match or 'pinned'}",
                                       scopes=["gmail.readonly"], auth=auth)
    assert issued.client_secret == ""
    return issued.client_id


def _call(world: World, client_id: str, leaf: x509.Certificate | None, *,
          chain: list[x509.Certificate] = (), peer: str = PROXY,  # type: ignore[assignment]
          body: dict[str, Any] | None = None) -> Any:
    headers = {}
    if leaf is not None:
        headers["Client-Cert"] = _sf(leaf)
    if chain:
        headers["Client-Cert-Chain"] = ", ".join(_sf(c) for c in chain)
    payload = {"user": world.user.email, "client_id": client_id} if body is None else body
    return world.app.test_client().post("/api/v1/token", json=payload, headers=headers,
                                        environ_base={"REMOTE_ADDR": peer})


def _tls_auth(ca: Issued, match: str, value: str) -> clients.ClientAuth:
    return clients.ClientAuth("tls_client_auth", ca.pem().decode(), match, value)


def test_a_leaf_of_the_tenants_ca_with_its_san_uri_gets_a_token(
    mtls_world: World, acme_ca: Issued
) -> None:
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "san_uri", "spiffe://acme/nightly"))
    leaf = _client_leaf(acme_ca, san=[x509.UniformResourceIdentifier("spiffe://acme/nightly")])
    answer = _call(mtls_world, client_id, leaf.cert)
    assert answer.status_code == 200, answer.get_json()
    with get_db(mtls_world.app).transaction(write=False) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "token.handout")
                                .order_by(AuditEvent.seq.desc())).first()
    assert event is not None and event.actor_id == client_id
    assert event.details["cert_sha256"] == thumbprint(leaf.cert)
    assert event.details["cert_serial"] == f"{leaf.cert.serial_number:x}"
    assert event.details["cert_issuer"] == acme_ca.cert.subject.rfc4514_string()
    assert event.details["cert_via"] == "proxy"


def test_a_dn_only_leaf_matches_its_subject(mtls_world: World, acme_ca: Issued) -> None:
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "subject_dn", "CN=nightly,O=Acme"))
    answer = _call(mtls_world, client_id, _client_leaf(acme_ca).cert)
    assert answer.status_code == 200, answer.get_json()
    other = _call(mtls_world, client_id, _client_leaf(acme_ca, cn="other").cert)
    assert other.status_code == 401


@pytest.mark.parametrize("case", [
    "san_only_leaf_for_a_dn_rule", "wrong_eku", "expired", "not_yet_valid",
    "foreign_ca_same_dn", "no_cn_fallback_for_san_dns", "another_tenants_ca",
])
def test_leaves_that_must_not_authenticate(
    mtls_world: World, acme_ca: Issued, make_world: Callable[..., World], case: str
) -> None:
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "subject_dn", "CN=nightly,O=Acme")
                             if case == "san_only_leaf_for_a_dn_rule" else
                             _tls_auth(acme_ca, "san_dns", "nightly.acme.test"))
    san = [x509.DNSName("nightly.acme.test")]
    leaf = {
        "san_only_leaf_for_a_dn_rule": lambda: _client_leaf(acme_ca, cn="x", san=san),
        "wrong_eku": lambda: _client_leaf(acme_ca, san=san, eku=ExtendedKeyUsageOID.SERVER_AUTH),
        "expired": lambda: _client_leaf(acme_ca, san=san, start=NOW - dt.timedelta(days=40)),
        "not_yet_valid": lambda: _client_leaf(acme_ca, san=san,
                                              start=NOW + dt.timedelta(days=1)),
        # Same distinguished name, another key: CAs are pinned by key, not by name.
        "foreign_ca_same_dn": lambda: _client_leaf(issue("Acme issuing CA", ca=True), san=san),
        "no_cn_fallback_for_san_dns": lambda: _client_leaf(acme_ca, cn="nightly.acme.test"),
        "another_tenants_ca": lambda: _client_leaf(issue("Globex CA", ca=True), san=san),
    }[case]()
    answer = _call(mtls_world, client_id, leaf.cert)
    assert answer.status_code == 401
    assert answer.get_json() == {"error": "invalid_client",
                                 "error_description": "Client authentication failed."}


def test_another_tenants_registered_ca_with_the_same_subject_does_not_authenticate(
    mtls_world: World, acme_ca: Issued, make_world: Callable[..., World]
) -> None:
    rule = _tls_auth(acme_ca, "subject_dn", "CN=nightly,O=Acme")
    acme_client = _cert_client(mtls_world, rule)
    # Another tenant of the same broker registers its own CA, named like acme's.
    other = make_world(app=mtls_world.app)
    globex_ca = issue("Acme issuing CA", ca=True)
    globex_client = _cert_client(other, _tls_auth(globex_ca, "subject_dn", "CN=nightly,O=Acme"))
    leaf = _client_leaf(globex_ca)  # subject CN=nightly,O=Acme, as acme's rule names
    assert _call(mtls_world, acme_client, leaf.cert).status_code == 401
    assert _call(other, globex_client, leaf.cert).status_code == 200  # its own client: yes


def test_an_intermediate_in_the_chain_header_is_used_but_the_anchor_is_the_clients_ca(
    mtls_world: World, acme_ca: Issued
) -> None:
    mid = issue("Acme jobs CA", issuer=acme_ca, ca=True)
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "san_dns", "jobs.acme.test"))
    leaf = _client_leaf(mid, san=[x509.DNSName("jobs.acme.test")])
    assert _call(mtls_world, client_id, leaf.cert).status_code == 401  # intermediate missing
    assert _call(mtls_world, client_id, leaf.cert, chain=[mid.cert]).status_code == 200


def test_the_header_is_believed_only_from_the_mtls_proxies(
    mtls_world: World, acme_ca: Issued
) -> None:
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "san_dns", "nightly.acme.test"))
    leaf = _client_leaf(acme_ca, san=[x509.DNSName("nightly.acme.test")])
    assert _call(mtls_world, client_id, leaf.cert, peer="203.0.113.9").status_code == 401
    assert _call(mtls_world, client_id, leaf.cert, peer=PROXY).status_code == 200
    garbled = mtls_world.app.test_client().post(
        "/api/v1/token", json={"user": mtls_world.user.email, "client_id": client_id},
        headers={"Client-Cert": ":bm90IGEgY2VydA==:"}, environ_base={"REMOTE_ADDR": PROXY})
    assert garbled.status_code == 401


def test_self_signed_clients_are_pinned_and_may_hold_two(mtls_world: World) -> None:
    old, new, stranger = _self_signed("old"), _self_signed("new"), _self_signed("old")
    client_id = _cert_client(mtls_world, clients.ClientAuth(
        "self_signed_tls_client_auth", certificates=(old.pem().decode(), new.pem().decode())))
    assert _call(mtls_world, client_id, old.cert).status_code == 200
    assert _call(mtls_world, client_id, new.cert).status_code == 200
    assert _call(mtls_world, client_id, stranger.cert).status_code == 401  # same name, not pinned


def test_one_method_per_client_and_no_secret_for_certificate_clients(
    mtls_world: World, acme_ca: Issued
) -> None:
    client_id = _cert_client(mtls_world, _tls_auth(acme_ca, "san_dns", "nightly.acme.test"))
    basic = mtls_world.app.test_client().post(
        "/api/v1/token", json={"user": mtls_world.user.email},
        headers={"Authorization": "Basic " + base64.b64encode(f"{client_id}:x".encode()).decode()})
    assert basic.status_code == 401
    # A secret client cannot be reached with a certificate, even a valid one.
    leaf = _client_leaf(acme_ca, san=[x509.DNSName("nightly.acme.test")])
    assert _call(mtls_world, mtls_world.client_id, leaf.cert).status_code == 401
    # The body names the client a certificate authenticates, and only that one.
    missing = _call(mtls_world, client_id, leaf.cert, body={"user": mtls_world.user.email})
    assert missing.status_code == 401
    with get_db(mtls_world.app).transaction() as session:
        with pytest.raises(InvalidRequest, match="not a secret"):
            clients.rotate_secret(session, client_id, grace=dt.timedelta(0), now=NOW)
    named = mtls_world.token({"user": mtls_world.user.email, "client_id": client_id})
    assert named.status_code == 400 and "another client" in named.get_json()["error_description"]


@pytest.mark.parametrize(("form", "header"), [
    ("nginx", lambda c: {"X-SSL-Client-Cert": quote(c.public_bytes(
        serialization.Encoding.PEM).decode())}),
    ("envoy", lambda c: {"X-Forwarded-Client-Cert": 'By=spiffe://proxy;Hash=ab;Cert="' + quote(
        c.public_bytes(serialization.Encoding.PEM).decode()) + '";Subject="CN=a,O=b"'}),
])
def test_nginx_and_envoy_forms(
    make_app: Callable[..., Flask], emulator: EmulatorControls,
    make_world: Callable[..., World], acme_ca: Issued, form: str,
    header: Callable[[x509.Certificate], dict[str, str]],
) -> None:
    app = make_app(**broker_config(emulator, MTLS_PROXIES="10.0.0.0/24", MTLS_HEADER=form))
    world = make_world(app=app)
    client_id = _cert_client(world, _tls_auth(acme_ca, "san_dns", "nightly.acme.test"))
    leaf = _client_leaf(acme_ca, san=[x509.DNSName("nightly.acme.test")])
    answer = app.test_client().post(
        "/api/v1/token", json={"user": world.user.email, "client_id": client_id},
        headers=header(leaf.cert), environ_base={"REMOTE_ADDR": PROXY})
    assert answer.status_code == 200, answer.get_json()


def test_registration_refuses_what_cannot_work(mtls_world: World, acme_ca: Issued) -> None:
    leaf = _client_leaf(acme_ca)
    cases = [
        (clients.ClientAuth("tls_client_auth", leaf.pem().decode(), "san_dns", "a.test"),
         "not a CA certificate"),
        (clients.ClientAuth("tls_client_auth", acme_ca.pem().decode()), "exactly one name"),
        (clients.ClientAuth("tls_client_auth", "junk", "san_dns", "a.test"), "not a PEM"),
        (clients.ClientAuth("tls_client_auth", acme_ca.pem().decode(), "subject_dn", "CN"),
         "subject DN like"),
        (clients.ClientAuth("self_signed_tls_client_auth", certificates=(leaf.pem().decode(),)),
         "not self-signed"),
        (clients.ClientAuth("self_signed_tls_client_auth"), "one or two certificates"),
        (clients.ClientAuth("client_secret_basic", acme_ca.pem().decode()), "need --auth"),
    ]
    for auth, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            _cert_client(mtls_world, auth)


def test_the_metadata_document_names_the_methods(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_app(**broker_config(emulator, MTLS_URL="https://mtls.broker.test:8443"))
    document = app.test_client().get("/.well-known/oauth-authorization-server").get_json()
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic", "tls_client_auth", "self_signed_tls_client_auth",
        "private_key_jwt"]
    assert document["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert document["tls_client_certificate_bound_access_tokens"] is False
    assert document["mtls_endpoint_aliases"] == {
        "token_endpoint": "https://mtls.broker.test:8443/api/v1/token"}
