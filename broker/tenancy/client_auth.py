"""API-client credentials: the client row as a request needs it, cached briefly; secret checks."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from flask import Flask, current_app
from joserfc.jwk import KeySet
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.clientip import IPAddress, ip_in
from broker.config import Network
from broker.db import get_db
from broker.errors import InvalidClient, InvalidToken
from broker.jwks import key_set_of
from broker.keys import digest
from broker.models import ApiClient, ClientCA, Policy
from broker.tls import CertificateRejected, Presented, leaf_matches, pinned, verify_client

EXTENSION = "broker.client_cache"
# `last_used_at` is written at most this often per client and process (issue 12 item 6).
LAST_USED_EVERY = dt.timedelta(minutes=1)
log = logging.getLogger(__name__)
# Compared against when the id is unknown, so an unknown id costs the same as a wrong secret.
_DUMMY = digest("no such client")


@dataclass(frozen=True)
class ClientInfo:
    """What a request needs of its client, cached briefly."""

    id: str
    tenant_id: uuid.UUID
    secret_sha256: str
    previous_secret_sha256: str | None
    previous_secret_expires_at: dt.datetime | None
    allowed_scopes: tuple[str, ...]
    allowed_ip_ranges: tuple[Network, ...]
    token_ip_ranges: tuple[Network, ...]
    status: str
    auth_method: str = "client_secret_basic"
    tls_ca: x509.Certificate | None = None  # tls_client_auth: the one CA, parsed once per load
    tls_match: str | None = None
    tls_match_value: str | None = None
    tls_certificates: tuple[str, ...] = ()  # self_signed_tls_client_auth: the pinned PEMs
    jwt_keys: KeySet | None = None  # private_key_jwt: the pinned keys, parsed once per load
    jwks_url: str | None = None  # private_key_jwt: or where its keys are published
    gmail_methods: tuple[str, ...] | None = None  # the proxy's allowlist; None: by scopes

    def admits(self, address: IPAddress) -> bool:
        """Say whether an address lies within the tenant's and the client's IP ranges."""
        return ip_in(address, self.token_ip_ranges) and ip_in(address, self.allowed_ip_ranges)


# Longest a request waits for another's read of the same client row before reading it itself.
LOAD_WAIT = 5.0


class ClientCache:
    """Client rows by id (unknown ids too) for a few seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._rows: dict[str, tuple[float, ClientInfo | None]] = {}
        # When this process last wrote each client's last use (authenticated clients only).
        self._used: dict[str, dt.datetime] = {}
        # Certificates this process verified for a client, by (client, chain digest): until.
        self._verified: dict[tuple[str, str], float] = {}
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, app: Flask, client_id: str) -> ClientInfo | None:
        """Return a client by id from the cache, else from the database (one load at a time
        per id: when an entry expires under load, the requests for it wait for one read
        instead of each reading the row)."""
        now = time.monotonic()
        with self._lock:
            hit = self._rows.get(client_id)
            if hit is not None and hit[0] > now:
                return hit[1]
            loading = self._loading.get(client_id)
            if loading is None:
                loading = self._loading[client_id] = threading.Event()
                leader = True
            else:
                leader = False
        if not leader:
            loading.wait(LOAD_WAIT)
            with self._lock:
                hit = self._rows.get(client_id)
            if hit is not None and hit[0] > now:
                return hit[1]
            return self._load(app, client_id, now)  # the leader failed or is slow
        try:
            return self._load(app, client_id, now)
        finally:
            with self._lock:
                self._loading.pop(client_id, None)
            loading.set()

    def _load(self, app: Flask, client_id: str, now: float) -> ClientInfo | None:
        info = _load(app, client_id)
        with self._lock:
            if len(self._rows) > 10_000:  # unknown ids must not grow the cache without bound
                self._rows.clear()
            self._rows[client_id] = (now + self.seconds, info)
        return info

    def clear(self) -> None:
        """Forget every cached client."""
        with self._lock:
            self._rows.clear()
            self._verified.clear()

    def verified(self, key: tuple[str, str]) -> bool:
        """Say whether this chain was verified for this client within the cache's lifetime."""
        with self._lock:
            until = self._verified.get(key)
        return until is not None and until > time.monotonic()

    def remember(self, key: tuple[str, str], seconds: float) -> None:
        """Remember a verified chain for at most the cache's lifetime."""
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = time.monotonic() + min(seconds, self.seconds)

    def use_due(self, client_id: str, now: dt.datetime) -> bool:
        """Say whether a client's last use is due to be written; if so, count it as written."""
        with self._lock:
            written = self._used.get(client_id)
            if written is not None and now - written < LAST_USED_EVERY:
                return False
            self._used[client_id] = now
            return True


def _load(app: Flask, client_id: str) -> ClientInfo | None:
    with get_db(app).transaction(write=False) as session:
        row = session.execute(
            select(ApiClient, Policy.token_ip_ranges, ClientCA.pem)
            .join(Policy, Policy.tenant_id == ApiClient.tenant_id)
            .outerjoin(ClientCA, ClientCA.id == ApiClient.tls_ca_id)
            .where(ApiClient.id == client_id)
        ).one_or_none()
    if row is None:
        return None
    client, token_ranges, ca_pem = row
    return ClientInfo(
        id=client.id, tenant_id=client.tenant_id, secret_sha256=client.secret_sha256,
        previous_secret_sha256=client.previous_secret_sha256,
        previous_secret_expires_at=client.previous_secret_expires_at,
        allowed_scopes=tuple(client.allowed_scopes),
        # Parsed once per load, not per request.
        allowed_ip_ranges=_networks(client.allowed_ip_ranges),
        token_ip_ranges=_networks(token_ranges or ()), status=client.status,
        auth_method=client.auth_method,
        tls_ca=x509.load_pem_x509_certificate(ca_pem.encode()) if ca_pem else None,
        tls_match=client.tls_match, tls_match_value=client.tls_match_value,
        tls_certificates=tuple(client.tls_certificates or ()),
        jwt_keys=_pinned_keys(client.jwt_jwks), jwks_url=client.jwks_url,
        gmail_methods=None if client.gmail_methods is None else tuple(client.gmail_methods),
    )


def _pinned_keys(document: dict[str, Any] | None) -> KeySet | None:
    if not document:
        return None
    try:
        return key_set_of(document)
    except ValueError:
        log.warning("a client's pinned JWK Set does not load", extra={"event": "client_jwks"})
        return None


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def get_cache(app: Flask | None = None) -> ClientCache:
    """Return the app's client cache."""
    app = app or current_app
    cache: ClientCache = app.extensions[EXTENSION]
    return cache


def verify_secret(
    app: Flask, client_id: str, secret: str, now: dt.datetime,
    headers: dict[str, str] | None = None,
) -> ClientInfo:
    """Return the client whose secret this is, or raise InvalidClient (same cost if unknown)."""
    info = get_cache(app).get(app, client_id)
    offered = digest(secret)
    current = hmac.compare_digest(offered, info.secret_sha256 if info else _DUMMY)
    previous = hmac.compare_digest(
        offered, (info.previous_secret_sha256 if info else None) or _DUMMY
    )
    in_grace = bool(
        info and info.previous_secret_expires_at and now < info.previous_secret_expires_at
    )
    if info is None or info.status != "active" or not (current or (previous and in_grace)):
        raise InvalidClient(headers=headers or {})
    if info.auth_method != "client_secret_basic":  # one method per client: no downgrade
        raise InvalidClient(headers=headers or {})
    if get_cache(app).use_due(info.id, now):
        _record_use(app, info.id, now)
    return info


def verify_grant(app: Flask, client_id: str, tenant_id: uuid.UUID) -> ClientInfo:
    """Return the client a proxy token was issued to, if it is still active in its tenant."""
    info = get_cache(app).get(app, client_id)
    if info is None or info.status != "active" or info.tenant_id != tenant_id:
        raise InvalidToken()
    return info


def verify_certificate(
    app: Flask, client_id: str, offered: Presented, now: dt.datetime
) -> ClientInfo:
    """Return the client this certificate authenticates, or raise CertificateRejected(reason)."""
    cache = get_cache(app)
    info = cache.get(app, client_id)
    if info is None or info.status != "active":
        raise CertificateRejected("unknown_client")
    # A job keeps its connection and certificate: verify a chain once per cache lifetime
    # (the client row is re-read as often), never past the leaf's own expiry.
    key = (info.id, offered.digest())
    if not cache.verified(key):
        _check_certificate(info, offered, now)
        cache.remember(key, (offered.leaf.not_valid_after_utc - now).total_seconds())
    if cache.use_due(info.id, now):
        _record_use(app, info.id, now)
    return info


def _check_certificate(info: ClientInfo, offered: Presented, now: dt.datetime) -> None:
    """Apply the client's one method to the certificate; raise CertificateRejected if not."""
    if info.auth_method == "tls_client_auth" and info.tls_ca is not None:
        verify_client(offered, info.tls_ca, now)  # the client's own CA, whatever a proxy said
        if not leaf_matches(offered.leaf, info.tls_match or "", info.tls_match_value or ""):
            raise CertificateRejected("name_mismatch")
    elif info.auth_method == "self_signed_tls_client_auth":
        if not pinned(offered, list(info.tls_certificates), now):
            raise CertificateRejected("not_pinned")
    else:
        raise CertificateRejected("wrong_method")


def note_use(app: Flask, client_id: str, now: dt.datetime) -> None:
    """Write an authenticated client's last use, at most once a minute per process."""
    if get_cache(app).use_due(client_id, now):
        _record_use(app, client_id, now)


def _record_use(app: Flask, client_id: str, now: dt.datetime) -> None:
    """Write a client's last use: one UPDATE a minute per process, a no-op if another wrote it."""
    try:
        with get_db(app).transaction() as session:
            session.execute(
                update(ApiClient)
                .where(ApiClient.id == client_id,
                       or_(ApiClient.last_used_at.is_(None),
                           ApiClient.last_used_at <= now - LAST_USED_EVERY))
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError:
        # Bookkeeping for the admin page: it must never refuse a job (the next minute retries).
        log.warning("client last use not recorded", extra={"event": "client_last_used"})


def init_app(app: Flask) -> None:
    """Attach the client cache."""
    app.extensions[EXTENSION] = ClientCache(app.config["BROKER"].CLIENT_CACHE_SECONDS)
