"""Webhook registration: add with a secret shown once, disable, list, recent deliveries.

The admin pages and the `broker webhook …` commands call these same functions, so a target is
validated, and the change audited, the same way whoever asks.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import audit
from broker.clock import utcnow
from broker.errors import InvalidRequest, NotFound
from broker.keys import KeyService
from broker.models import Webhook, WebhookDelivery
from broker.tls import TlsConfigError, check_chain, thumbprint
from broker.webhooks.delivery import EVENTS
from broker.webhooks.targets import allowed, literal

MAX_URL = 2000
RECENT_DELIVERIES = 50
# The sealing binding keys.reseal_tenant uses for this column (a field name, not a secret).
SECRET_FIELD = "webhook_secret"  # noqa: S105
KEY_FIELD = "webhook_client_key"


@dataclass(frozen=True)
class Added:
    """A new webhook with its signing secret, shown once."""

    webhook: Webhook
    secret: str


def check_url(url: str, *, allow_private: bool) -> str:
    """Return a webhook target URL, or raise InvalidRequest (the worker re-checks at send)."""
    url = url.strip()
    if not url or len(url) > MAX_URL or not url.isascii() or any(c.isspace() for c in url):
        raise InvalidRequest("a webhook URL is an https:// address of at most 2000 characters")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        raise InvalidRequest("a webhook URL must start with https://")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise InvalidRequest("a webhook URL needs a host, and no credentials or fragment")
    if not allow_private and _private_host(parts.hostname):
        raise InvalidRequest("private, loopback and link-local webhook targets are refused")
    return url


def _private_host(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    address = literal(host)
    # A name is resolved, checked by the same rule and pinned by the worker when it sends.
    return address is not None and not allowed(address, allow_private=False)


def safe_url(url: str) -> str:
    """Return a target URL without its query, which may carry the receiver's own token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def check_events(events: Iterable[str] | None) -> list[str]:
    """Return the chosen events in canonical order ([] for every event), or raise InvalidRequest.

    None subscribes to every event, including those added later; a given choice must name at
    least one.
    """
    if events is None:
        return []
    chosen = set(events)
    unknown = chosen - set(EVENTS)
    if unknown:
        raise InvalidRequest(f"unknown event {sorted(unknown)[0][:60]!r}")
    if not chosen:
        raise InvalidRequest("choose at least one event")
    return [e for e in EVENTS if e in chosen]


def check_client_certificate(
    url: str, cert_pem: str, key_pem: bytes, now: dt.datetime
) -> x509.Certificate:
    """Return the leaf of a certificate deliveries will present, or say what is wrong."""
    if not url.startswith("https://"):
        raise InvalidRequest("a client certificate needs an https:// webhook URL")
    try:
        report = check_chain(cert_pem.encode(), now, key_pem)
    except TlsConfigError as exc:
        raise InvalidRequest(f"the client certificate: {exc}") from None
    if not report.ok:
        raise InvalidRequest("the client certificate: " + "; ".join(report.problems))
    return report.certificates[0]


def add(
    session: Session, keys: KeyService, tenant_id: uuid.UUID, *, url: str,
    events: Iterable[str] | None, allow_private: bool, actor: str, ip: str | None = None,
    client_cert: str | None = None, client_key: bytes | None = None,
) -> Added:
    """Register a webhook; its secret is stored sealed and returned once.

    `events` None subscribes to every event (the CLI without `--event`); the page always passes
    the ticked events, and an empty choice is refused. With a client certificate and its key
    (two-way TLS), deliveries present it; the key is sealed like a token.
    """
    hook = Webhook(
        id=uuid.uuid4(), tenant_id=tenant_id, url=check_url(url, allow_private=allow_private),
        events=check_events(events), status="active",
    )
    secret = "whsec_" + secrets.token_urlsafe(32)
    hook.secret = keys.seal(session, tenant_id, hook.id, SECRET_FIELD, secret.encode())
    details: dict[str, object] = {
        "webhook_id": str(hook.id), "url": safe_url(hook.url), "events": hook.events}
    if (client_cert is None) != (client_key is None):
        raise InvalidRequest("a client certificate and its key go together")
    if client_cert is not None and client_key is not None:
        leaf = check_client_certificate(hook.url, client_cert, client_key, utcnow())
        hook.client_cert = client_cert
        hook.client_key = keys.seal(session, tenant_id, hook.id, KEY_FIELD, client_key)
        details.update(cert_sha256=thumbprint(leaf),
                       cert_not_after=leaf.not_valid_after_utc.isoformat())
    session.add(hook)
    audit.record(
        session, action="webhook.create", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details=details,
    )
    return Added(hook, secret)


def get_webhook(
    session: Session, webhook_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
) -> Webhook:
    """Return a webhook, of this tenant when one is given; another tenant's is as absent."""
    query = select(Webhook).where(Webhook.id == webhook_id)
    if tenant_id is not None:
        query = query.where(Webhook.tenant_id == tenant_id)
    hook = session.scalar(query)
    if hook is None:
        raise NotFound("There is no such webhook in your organization.")
    return hook


def disable(
    session: Session, webhook_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None,
    actor: str, ip: str | None = None,
) -> Webhook:
    """Stop sending to a webhook (of this tenant when one is given)."""
    hook = get_webhook(session, webhook_id, tenant_id=tenant_id)
    hook.status = "disabled"
    audit.record(
        session, action="webhook.disable", tenant_id=hook.tenant_id, actor_type="admin",
        actor_id=actor, ip=ip, details={"webhook_id": str(hook.id), "url": safe_url(hook.url)},
    )
    return hook


def list_webhooks(session: Session, tenant_id: uuid.UUID) -> list[Webhook]:
    """Return the tenant's webhooks, newest first."""
    return list(session.scalars(
        select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.created_at.desc())
    ))


def recent_deliveries(
    session: Session, tenant_id: uuid.UUID, limit: int = RECENT_DELIVERIES
) -> list[tuple[WebhookDelivery, str]]:
    """Return the tenant's latest deliveries with their target URLs, newest first."""
    rows = session.execute(
        select(WebhookDelivery, Webhook.url)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.tenant_id == tenant_id)
        .order_by(WebhookDelivery.created_at.desc())
        .limit(limit)
    )
    return [(delivery, url) for delivery, url in rows]
