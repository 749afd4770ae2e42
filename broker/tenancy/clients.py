"""API clients of a tenant: create, rotate the secret with a grace period, disable, edit, list.

Every surface (the `broker client …` commands and the admin pages) calls these functions, so the
validation, the audit event and the refusal are the same whoever asks. `tenant_id` scopes a
lookup to one tenant (the admin pages); the CLI, which names no tenant, passes None.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import audit
from broker.config import is_loopback_url
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.google import gmail_methods
from broker.keys import digest, new_secret
from broker.models import ApiClient, ClientCA, Tenant
from broker.scopes import InvalidScope, normalise
from broker.tenancy.policy import parse_duration
from broker.tls import MATCHES, describe, is_ca, normalise_match, spki_sha256, thumbprint

MAX_GRACE = dt.timedelta(days=30)
METHODS = ("client_secret_basic", "tls_client_auth", "self_signed_tls_client_auth",
           "private_key_jwt")


@dataclass(frozen=True)
class ClientAuth:
    """How a client will authenticate: a secret, a certificate from a CA, or a pinned one."""

    method: str = "client_secret_basic"
    ca_pem: str | None = None  # tls_client_auth: the CA (PEM) that issues the client's leaves
    match: str | None = None  # tls_client_auth: subject_dn, san_dns, san_uri, san_ip, san_email
    match_value: str | None = None
    certificates: tuple[str, ...] = ()  # self_signed_tls_client_auth: one or two PEMs
    public_key_pem: str | None = None  # private_key_jwt: the job's public key (PEM)
    jwks_url: str | None = None  # private_key_jwt: or the https URL of its JWK Set


@dataclass(frozen=True)
class Issued:
    """A client id with its secret, shown once."""

    client_id: str
    client_secret: str


def check_ranges(ranges: Iterable[str]) -> list[str]:
    """Return CIDRs normalised, or raise InvalidRequest naming the bad one."""
    clean = []
    for item in ranges:
        try:
            clean.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise InvalidRequest(f"not an IP range: {item!r}") from None
    return clean


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Return scopes in full form, or raise InvalidRequest."""
    try:
        clean = normalise(list(scopes))
    except InvalidScope as exc:
        raise InvalidRequest(str(exc)) from None
    if not clean:
        raise InvalidRequest("a client needs at least one scope")
    return clean


def check_methods(methods: Iterable[str] | None, scopes: Iterable[str]) -> list[str] | None:
    """Return a Gmail method allowlist, each id known and permitted by the client's scopes.

    None (no list given) means: every method the client's scopes permit.
    """
    if methods is None:
        return None
    table, wanted = gmail_methods(), list(dict.fromkeys(m.strip() for m in methods))
    unknown = [m for m in wanted if m not in table.by_id]
    if unknown:
        raise InvalidRequest(f"unknown Gmail method {unknown[0][:80]!r}: use discovery ids "
                             "such as gmail.users.messages.list")
    permitted = set(table.permitted_by(list(scopes)))
    outside = [m for m in wanted if m not in permitted]
    if outside:
        raise InvalidRequest(f"{outside[0]} needs a scope this client may not use")
    return sorted(wanted)


def allowed_methods(row: ApiClient) -> list[str]:
    """Return the Gmail methods a client may call through the proxy."""
    if row.gmail_methods is not None:
        return list(row.gmail_methods)
    return gmail_methods().permitted_by(row.allowed_scopes)


def parse_grace(text: str) -> dt.timedelta:
    """Read how long the old secret keeps working (`0h` ends it at once), at most 30 days."""
    try:
        grace = dt.timedelta(seconds=parse_duration(text or "0h"))
    except ValueError:
        raise InvalidRequest(f"not a duration (like 24h): {text.strip()[:40]!r}") from None
    if grace > MAX_GRACE:
        raise InvalidRequest("the grace period is at most 30d")
    return grace


def check_name_free(session: Session, tenant_id: uuid.UUID, name: str) -> None:
    """Raise Conflict when the tenant already has a client of this name (any case, any status)."""
    # Disabled clients count too: their name stays in the audit log and must keep meaning one.
    taken = session.scalar(
        select(ApiClient.id).where(
            ApiClient.tenant_id == tenant_id, func.lower(ApiClient.name) == name.lower()
        ).limit(1)
    )
    if taken is not None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise Conflict(f"an API client named {shown!r} already exists; choose another name")


def scopes_in_use(session: Session, tenant_id: uuid.UUID) -> set[str]:
    """Return the scopes some active API client of the tenant may ask for."""
    allowed = session.scalars(
        select(ApiClient.allowed_scopes).where(
            ApiClient.tenant_id == tenant_id, ApiClient.status == "active"
        )
    )
    return {scope for scopes in allowed for scope in scopes}


def get_client(
    session: Session, client_id: str, *, tenant_id: uuid.UUID | None = None
) -> ApiClient:
    """Return a client, of this tenant when one is given; another tenant's is as absent."""
    query = select(ApiClient).where(ApiClient.id == client_id)
    if tenant_id is not None:
        query = query.where(ApiClient.tenant_id == tenant_id)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"There is no API client {client_id[:60]!r}.")
    return row


def _certificate(pem: str, what: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise InvalidRequest(f"the {what} is not a PEM certificate") from None
    if len(certs) != 1:
        raise InvalidRequest(f"give exactly one certificate as the {what}")
    return certs[0]


def client_ca(session: Session, client: ApiClient) -> ClientCA | None:
    """Return the CA a tls_client_auth client's certificates chain to (None for others)."""
    return session.get(ClientCA, client.tls_ca_id) if client.tls_ca_id else None


def register_ca(session: Session, tenant_id: uuid.UUID, pem: str) -> ClientCA:
    """Return the tenant's CA with this public key, registering it the first time."""
    cert = _certificate(pem, "client CA")
    if not is_ca(cert):
        raise InvalidRequest("the client CA is not a CA certificate (basicConstraints CA:TRUE)")
    spki = spki_sha256(cert)
    row = session.scalar(select(ClientCA).where(ClientCA.tenant_id == tenant_id,
                                                ClientCA.spki_sha256 == spki))
    if row is None:
        row = ClientCA(tenant_id=tenant_id, spki_sha256=spki,
                       pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                       subject=cert.subject.rfc4514_string()[:512],
                       not_after=cert.not_valid_after_utc)
        session.add(row)
        session.flush()
    return row


def _apply_auth(session: Session, row: ApiClient, auth: ClientAuth) -> dict[str, object]:
    """Set the client's method and its certificate rules; return what the audit records."""
    if auth.method not in METHODS:
        raise InvalidRequest(f"auth must be one of {', '.join(METHODS)}")
    row.auth_method = auth.method
    if auth.method != "private_key_jwt" and (auth.public_key_pem or auth.jwks_url):
        raise InvalidRequest("a public key or JWKS URL needs --auth private_key_jwt")
    if auth.method == "client_secret_basic":
        if auth.ca_pem or auth.match or auth.certificates:
            raise InvalidRequest("certificate options need --auth tls_client_auth or "
                                 "self_signed_tls_client_auth")
        return {"auth_method": auth.method}
    if auth.method == "private_key_jwt":
        if auth.ca_pem or auth.match or auth.certificates:
            raise InvalidRequest("private_key_jwt takes a public key or a JWKS URL, "
                                 "not certificates")
        return _apply_key(row, auth)
    if auth.method == "tls_client_auth":
        if not auth.ca_pem or not auth.match or auth.certificates:
            raise InvalidRequest("tls_client_auth needs the client CA and exactly one name to "
                                 f"match ({', '.join(MATCHES)})")
        try:
            value = normalise_match(auth.match, auth.match_value or "")
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        ca = register_ca(session, row.tenant_id, auth.ca_pem)
        row.tls_ca_id, row.tls_match, row.tls_match_value = ca.id, auth.match, value
        return {"auth_method": auth.method, "ca_spki_sha256": ca.spki_sha256,
                "match": auth.match, "match_value": value}
    if auth.ca_pem or auth.match or not 1 <= len(auth.certificates) <= 2:
        raise InvalidRequest("self_signed_tls_client_auth takes one or two certificates "
                             "(two while replacing one)")
    pems = []
    for pem in auth.certificates:
        cert = _certificate(pem, "pinned certificate")
        if cert.issuer != cert.subject:
            raise InvalidRequest(f"the pinned certificate is not self-signed ({describe(cert)})")
        pems.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    row.tls_certificates = pems
    return {"auth_method": auth.method,
            "cert_sha256": [thumbprint(x509.load_pem_x509_certificate(p.encode()))
                            for p in pems]}


def _apply_key(row: ApiClient, auth: ClientAuth) -> dict[str, object]:
    """Register a private_key_jwt client's public key (as a pinned JWK Set) or JWKS URL."""
    if bool(auth.public_key_pem) == bool(auth.jwks_url):
        raise InvalidRequest("private_key_jwt needs exactly one of a public key (PEM) or a "
                             "JWKS URL")
    if auth.jwks_url:
        url = auth.jwks_url.strip()
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_url(url)):
            raise InvalidRequest("the JWKS URL must be https:// (http only on loopback)")
        if not parts.hostname or len(url) > 2000 or parts.username or parts.password:
            raise InvalidRequest("the JWKS URL is not a plain absolute URL")
        row.jwks_url, row.jwt_jwks = url, None
        return {"auth_method": auth.method, "jwks_url": url}
    key = public_jwk(auth.public_key_pem or "")
    row.jwt_jwks, row.jwks_url = {"keys": [key]}, None
    return {"auth_method": auth.method, "key_thumbprint": key["kid"]}


def public_jwk(pem: str) -> dict[str, Any]:
    """Return a PEM public key (RSA of 2048+ bits, or EC P-256) as a JWK, kid its thumbprint."""
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise InvalidRequest("the public key is not a PEM public key") from None
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= 2048:
        jwk: RSAKey | ECKey = RSAKey.import_key(public)
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
        jwk = ECKey.import_key(public)
    else:
        raise InvalidRequest("the public key must be RSA (2048 bits or more) or EC P-256")
    key = dict(jwk.as_dict(private=False))
    key["kid"] = jwk.thumbprint()
    key["alg"] = "RS256" if isinstance(jwk, RSAKey) else "ES256"
    return key


def create_client(
    session: Session, tenant: Tenant, *, name: str, scopes: Iterable[str],
    ip_ranges: Iterable[str] = (), actor: str | None = None, ip: str | None = None,
    auth: ClientAuth | None = None, methods: Iterable[str] | None = None,
) -> Issued:
    """Create an API client; a secret is returned once and stored only as a digest.

    A client that authenticates with a certificate or a signed assertion gets no usable secret
    (an empty one is returned): it has exactly one method, so nothing can downgrade it.
    """
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest("a client name is 1-200 characters")
    check_name_free(session, tenant.id, name)
    secret = new_secret()
    row = ApiClient(
        id="cl_" + secrets.token_hex(10), tenant_id=tenant.id, name=name,
        secret_sha256=digest(secret), allowed_scopes=check_scopes(scopes),
        allowed_ip_ranges=check_ranges(ip_ranges), status="active",
    )
    row.gmail_methods = check_methods(methods, row.allowed_scopes)
    how = _apply_auth(session, row, auth or ClientAuth())
    session.add(row)
    audit.record(
        session, action="client.create", tenant_id=tenant.id, actor_type="admin", actor_id=actor,
        ip=ip, scopes=row.allowed_scopes,
        details={"client_id": row.id, "name": name, "ip_ranges": row.allowed_ip_ranges,
                 **({"gmail_methods": row.gmail_methods} if methods is not None else {}),
                 **how},
    )
    return Issued(row.id, secret if row.auth_method == "client_secret_basic" else "")


def rotate_secret(
    session: Session, client_id: str, *, grace: dt.timedelta, now: dt.datetime,
    actor: str | None = None, tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> Issued:
    """Give an active client a new secret; the old one keeps working for `grace`."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    if row.status != "active":
        raise InvalidRequest("a disabled client gets no new secret")
    if row.auth_method != "client_secret_basic":
        raise InvalidRequest(f"this client authenticates with {row.auth_method}, not a secret")
    if grace > MAX_GRACE:
        raise InvalidRequest("the grace period is at most 30d")
    secret = new_secret()
    if grace.total_seconds() > 0:
        row.previous_secret_sha256 = row.secret_sha256
        row.previous_secret_expires_at = now + grace
    else:
        row.previous_secret_sha256 = row.previous_secret_expires_at = None
    row.secret_sha256 = digest(secret)
    audit.record(
        session, action="client.rotate_secret", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip,
        details={"client_id": row.id, "grace_seconds": int(grace.total_seconds())},
    )
    return Issued(row.id, secret)


def disable_client(
    session: Session, client_id: str, *, actor: str | None = None,
    tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> ApiClient:
    """Disable a client: its credentials stop working (within the brief client cache)."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    row.status = "disabled"
    audit.record(
        session, action="client.disable", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"client_id": row.id},
    )
    return row


def update_client(
    session: Session, client_id: str, *, scopes: Iterable[str], ip_ranges: Iterable[str],
    actor: str | None = None, tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Change a client's allowed scopes and IP ranges; audit before/after; return changes."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    after = {
        "allowed_scopes": check_scopes(scopes),
        "allowed_ip_ranges": list(dict.fromkeys(check_ranges(ip_ranges))),
    }
    changes = {
        name: {"before": list(getattr(row, name)), "after": value}
        for name, value in after.items()
        if list(getattr(row, name)) != value
    }
    if not changes:
        return {}
    for name, change in changes.items():
        setattr(row, name, change["after"])
    audit.record(
        session, action="client.update", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, scopes=row.allowed_scopes,
        details={
            "client_id": row.id,
            "before": {k: v["before"] for k, v in changes.items()},
            "after": {k: v["after"] for k, v in changes.items()},
        },
    )
    return changes


def set_methods(
    session: Session, client_id: str, methods: Iterable[str] | None, *,
    actor: str | None = None, tenant_id: uuid.UUID | None = None, ip: str | None = None,
) -> list[str] | None:
    """Set which Gmail methods a client may call (None: what its scopes permit); audit it."""
    row = get_client(session, client_id, tenant_id=tenant_id)
    after = check_methods(methods, row.allowed_scopes)
    before = row.gmail_methods
    if after == before:
        return after
    row.gmail_methods = after
    audit.record(
        session, action="client.set_methods", tenant_id=row.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip,
        details={"client_id": row.id, "before": before, "after": after},
    )
    return after


def list_clients(session: Session, tenant: Tenant) -> list[ApiClient]:
    """Return a tenant's clients, newest first."""
    return list(
        session.scalars(
            select(ApiClient)
            .where(ApiClient.tenant_id == tenant.id)
            .order_by(ApiClient.created_at.desc())
        )
    )
