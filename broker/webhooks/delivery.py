"""Signed webhook deliveries of connection events, retried by the worker, SSRF-guarded."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from flask import Flask, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.clock import backoff, get_clock, utcnow
from broker.db import get_db
from broker.keys import SealError, get_keys
from broker.models import Webhook, WebhookDelivery
from broker.tls import client_context, client_context_with_certificate
from broker.webhooks.targets import allowed

EVENTS = (
    "connection.created",
    "connection.degraded",
    "connection.recovered",
    "connection.needs_reauth",
    "connection.revoked",
    # Google flagged the account in a bulk (spam) disabling: for an admin to look into.
    "account.flagged",
)
MAX_ATTEMPTS = 10
TIMEOUT = 5.0


class UnsafeTarget(Exception):
    """A webhook target resolves to an address the broker must not call."""


def enqueue(
    session: Session, tenant_id: uuid.UUID, event: str, payload: dict[str, Any], *,
    now: dt.datetime | None = None,
) -> int:
    """Queue one delivery per active webhook of the tenant that wants this event, due `now`."""
    if now is None:
        # Callers holding a `now` pass it. Otherwise the app's clock, the one deliver_due reads,
        # so tests that move time agree; the worker's duties run outside any app context.
        now = get_clock()() if has_app_context() else utcnow()
    count = 0
    for hook in session.scalars(
        select(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.status == "active")
    ):
        if hook.events and event not in hook.events:
            continue
        session.add(
            WebhookDelivery(
                webhook_id=hook.id, tenant_id=tenant_id, event=event,
                payload={"event": event, "at": now.isoformat().replace("+00:00", "Z"), **payload},
                next_attempt_at=now,
            )
        )
        count += 1
    return count


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the signature header value: HMAC-SHA256 over `timestamp.body`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def pin(url: str, allow_private: bool) -> str:
    """Resolve the target once and return the address to connect to; refuse unsafe ones."""
    host = urlsplit(url).hostname or ""
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UnsafeTarget("the host does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not allowed(address, allow_private=allow_private):
            raise UnsafeTarget(f"the host resolves to a non-public address ({address})")
    return str(addresses[0])


def send(app: Flask, url: str, secret: str, delivery_id: str, event: str,
         payload: dict[str, Any], *, now: dt.datetime,
         certificate: tuple[str, bytes] | None = None) -> int:
    """POST one signed delivery, stamped `now`, to the pinned address; return the HTTP status."""
    pinned = pin(url, app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE)
    parts = urlsplit(url)
    host = f"[{pinned}]" if ":" in pinned else pinned
    netloc = host + (f":{parts.port}" if parts.port else "")
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    headers = {
        "Host": parts.netloc, "Content-Type": "application/json",
        "X-Broker-Event": event, "X-Broker-Delivery": delivery_id,
        "X-Broker-Timestamp": timestamp, "X-Broker-Signature": sign(secret, timestamp, body),
    }
    bundle = app.config["BROKER"].CA_BUNDLE
    verify = (client_context_with_certificate(bundle, *certificate) if certificate
              else client_context(bundle))
    with httpx.Client(follow_redirects=False, timeout=TIMEOUT, verify=verify) as client:
        response = client.post(target, content=body, headers=headers,
                               extensions={"sni_hostname": parts.hostname or ""})
    return response.status_code


def deliver_due(app: Flask, limit: int = 50) -> int:
    """Claim due deliveries (SKIP LOCKED), send them outside any transaction, record results."""
    db, keys, clock = get_db(app), get_keys(app), get_clock(app)
    now = clock()
    jobs = []
    with db.transaction() as session:
        rows = session.execute(
            select(WebhookDelivery, Webhook)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.delivered_at.is_(None),
                   WebhookDelivery.next_attempt_at.is_not(None),
                   WebhookDelivery.next_attempt_at <= now,
                   Webhook.status == "active")
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
        for delivery, hook in rows:
            delivery.next_attempt_at = now + dt.timedelta(seconds=60)  # our claim
            try:
                secret = keys.open(session, hook.tenant_id, hook.id, "webhook_secret",
                                   hook.secret).decode()
                certificate = None
                if hook.client_cert and hook.client_key:
                    certificate = (hook.client_cert, keys.open(
                        session, hook.tenant_id, hook.id, "webhook_client_key", hook.client_key))
            except SealError:
                delivery.last_status, delivery.next_attempt_at = "secret_unreadable", None
                continue
            jobs.append((delivery.id, hook.url, secret, delivery.event, dict(delivery.payload),
                         certificate))
    for delivery_id, url, secret, event, payload, certificate in jobs:
        try:
            status: str = str(
                send(app, url, secret, str(delivery_id), event, payload, now=clock(),
                     certificate=certificate)
            )
        except UnsafeTarget as exc:
            status = f"refused: {exc}"[:200]
        except httpx.HTTPError as exc:
            status = f"error: {type(exc).__name__}"
        except (ssl.SSLError, OSError) as exc:  # the CA bundle or the client key, locally
            status = f"error: {type(exc).__name__}"
        with db.transaction() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                continue
            delivery = row
            delivery.attempts += 1
            delivery.last_status = status
            if status.isdigit() and 200 <= int(status) < 300:
                delivery.delivered_at, delivery.next_attempt_at = clock(), None
            elif delivery.attempts >= MAX_ATTEMPTS or status.startswith("refused"):
                delivery.next_attempt_at = None
            else:
                wait = backoff(delivery.attempts, base=10.0, cap=3600.0)
                delivery.next_attempt_at = clock() + dt.timedelta(seconds=wait)
    return len(jobs)
