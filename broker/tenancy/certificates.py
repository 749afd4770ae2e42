"""The certificate inventory: every certificate the broker trusts or presents, with its expiry."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from flask import Flask
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker import metrics
from broker.clock import get_clock
from broker.db import get_db
from broker.models import ApiClient, ClientCA, Tenant, Webhook
from broker.tls import thumbprint
from broker.webhooks import safe_url

WARN_BEFORE = dt.timedelta(days=30)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One certificate: what it is for, whose, and the facts a reviewer asks for."""

    kind: str  # server, client_ca, pinned_client, webhook_client
    name: str
    tenant: str  # the tenant's slug ("" for the broker's own)
    subject: str
    issuer: str
    sha256: str
    not_after: dt.datetime

    def expires_within(self, now: dt.datetime, window: dt.timedelta = WARN_BEFORE) -> bool:
        """Say whether it has expired or will within the window."""
        return self.not_after - now <= window


def _entry(kind: str, name: str, tenant: str, pem: str | bytes) -> Entry | None:
    try:
        cert = x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)[0]
    except (ValueError, IndexError):
        return None
    return Entry(kind, name, tenant, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                 thumbprint(cert), cert.not_valid_after_utc)


def inventory(
    session: Session, tenant_id: uuid.UUID | None = None, server_chain: str | None = None
) -> list[Entry]:
    """List the certificates of one tenant (or of all, with the server's chain), soonest first."""
    out: list[Entry | None] = []
    if server_chain and tenant_id is None:
        try:
            out.append(_entry("server", server_chain, "", Path(server_chain).read_bytes()))
        except OSError:
            pass  # a missing file shows as no entry; `broker serve` refuses to start without it
    cas = select(ClientCA, Tenant.slug).join(Tenant, Tenant.id == ClientCA.tenant_id)
    pinned = (select(ApiClient, Tenant.slug).join(Tenant, Tenant.id == ApiClient.tenant_id)
              .where(ApiClient.auth_method == "self_signed_tls_client_auth"))
    hooks = (select(Webhook, Tenant.slug).join(Tenant, Tenant.id == Webhook.tenant_id)
             .where(Webhook.client_cert.is_not(None)))
    if tenant_id is not None:
        cas, pinned, hooks = (cas.where(ClientCA.tenant_id == tenant_id),
                              pinned.where(ApiClient.tenant_id == tenant_id),
                              hooks.where(Webhook.tenant_id == tenant_id))
    for ca, slug in session.execute(cas):
        out.append(_entry("client_ca", ca.subject, slug, ca.pem))
    for client, slug in session.execute(pinned):
        out.extend(_entry("pinned_client", client.name, slug, pem)
                   for pem in client.tls_certificates)
    for hook, slug in session.execute(hooks):
        out.append(_entry("webhook_client", safe_url(hook.url)[:120], slug,
                          hook.client_cert or ""))
    return sorted((e for e in out if e is not None), key=lambda e: e.not_after)


class ExpiryCollector(Collector):
    """`broker_certificate_expiry_seconds{kind,name}`: seconds until each certificate expires."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the inventory when scraped (negative: already expired)."""
        gauge = GaugeMetricFamily(
            "broker_certificate_expiry_seconds",
            "Seconds until a certificate the broker trusts or presents expires",
            labels=["kind", "name"],
        )
        now = get_clock(self.app)()
        try:
            with get_db(self.app).transaction(write=False) as session:
                entries = inventory(session, None, self.app.config["BROKER"].TLS_CERT)
        except SQLAlchemyError:
            entries = []  # the other metrics still answer while the database is down
        for e in entries:
            name = f"{e.tenant}/{e.name}" if e.tenant else e.name
            gauge.add_metric([e.kind, name[:200]], (e.not_after - now).total_seconds())
        yield gauge


def init_app(app: Flask) -> None:
    """Expose the certificates' expiry in /metrics."""
    metrics.add_collector(app, ExpiryCollector)
