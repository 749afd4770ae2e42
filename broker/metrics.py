"""Prometheus metrics: counters in every process, gauges read from the database at scrape time."""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from broker.clientip import client_ip, ip_in
from broker.db import get_db
from broker.errors import Forbidden
from broker.models import SYSTEM_CHAIN, AuditEvent, Connection, WorkerState

bp = Blueprint("metrics", __name__)

HANDOUTS = Counter(
    "broker_handouts_total", "Token API answers by outcome and refusal code",
    ["outcome", "reason"],
)
REFRESHES = Counter(
    "broker_refreshes_total", "Refreshes at Google by result class", ["result"]
)
MTLS_FAILURES = Counter(
    "broker_mtls_failures_total", "Client certificates that did not authenticate", ["reason"]
)
ASSERTION_FAILURES = Counter(
    "broker_assertion_failures_total", "Client assertions (private_key_jwt) that did not "
    "authenticate", ["reason"]
)
WORKLOAD_REJECTIONS = Counter(
    "broker_workload_rejections_total", "Workload subject tokens refused at the token exchange",
    ["reason"]
)
AUTH_FAILURES = Counter(
    "broker_api_auth_failures_total", "Failed API client authentications"
)
RATE_LIMITED = Counter("broker_rate_limited_total", "Requests refused by a rate limit", ["kind"])
MISCONFIGURED = Counter(
    "broker_google_misconfigured_total", "Google rejected the broker's own OAuth client"
)
UPSTREAM_SECONDS = Histogram(
    "broker_upstream_seconds", "Latency of calls to Google", ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUDIT_TAMPER = Counter(
    "broker_audit_tamper_total",
    "Audit events the chainer refused as inserted late or back-dated (each pass they remain)",
)
RISC_EVENTS = Counter(
    "broker_risc_events_total",
    "Security events Google pushed, by short type and outcome (acted, ignored, duplicate, "
    "refused, error)", ["type", "outcome"],
)
KEY_SERVICE_ERRORS = Counter(
    "broker_key_service_errors_total",
    "Wraps and unwraps a master key's service (HSM, KMS) failed to answer (alert on any)",
    ["provider"],
)
# The WorkerState row that serialises chaining and keeps the last signed checkpoint.
CHECKPOINT_STATE = "audit-checkpoint"
# Collectors higher packages add (e.g. the certificate inventory's expiry gauge).
COLLECTORS = "broker.metrics_collectors"
FETCH_SECONDS = Histogram(
    "broker_fetch_seconds", "Latency of POST /api/v1/token inside the broker",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Gmail through the broker (issue 13): calls by method id and outcome, units spent per tenant.
PROXY_CALLS = Counter(
    "broker_proxy_calls_total", "Proxied Gmail calls by method id and outcome "
    "(ok, gmail_error, denied, throttled, error)", ["method", "outcome"],
)
PROXY_SECONDS = Histogram(
    "broker_proxy_seconds", "Latency of proxied Gmail calls, headers received from Gmail",
    ["method"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROXY_UNITS = Counter(
    "broker_proxy_quota_units_total", "Gmail quota units spent through the proxy", ["tenant"]
)
PROXY_BYTES = Counter(
    "broker_proxy_bytes_total", "Bytes proxied, by direction (up: to Gmail)", ["direction"]
)
PROXY_THROTTLED = Counter(
    "broker_proxy_throttled_total",
    "Proxied calls the quota governor held back (user, project, concurrency, paused)", ["reason"],
)
PROXY_GOVERNOR_FALLBACK = Counter(
    "broker_proxy_governor_fallback_total",
    "Governor decisions made in process memory because Redis did not answer",
)
PROXY_PAUSES = Counter(
    "broker_proxy_pauses_total", "Users paused because Gmail said they were over quota"
)


class DatabaseCollector(Collector):
    """Connections by status, audit chain heads and the last checkpoint, read when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status = GaugeMetricFamily(
            "broker_connections", "Connections by status", labels=["status"]
        )
        head = GaugeMetricFamily(
            "broker_audit_chain_head", "Highest chained audit sequence per chain (tenant, system)",
            labels=["tenant_id"],
        )
        checkpoint_seq = GaugeMetricFamily(
            "broker_audit_checkpoint_seq", "Insertion sequence of the last signed audit checkpoint"
        )
        checkpoint_mac = GaugeMetricFamily(
            "broker_audit_checkpoint_mac48",
            "First 48 bits of the last audit checkpoint's MAC (`broker audit verify --expect`)",
        )
        try:
            with get_db(self.app).transaction(write=False) as session:
                stored = session.scalar(
                    select(WorkerState.value).where(WorkerState.name == CHECKPOINT_STATE)
                )
                found = re.fullmatch(r"(\d{1,18}):([0-9a-f]{12,64})", stored or "")
                if found:
                    checkpoint_seq.add_metric([], int(found[1]))
                    checkpoint_mac.add_metric([], int(found[2][:12], 16))
                for status, count in session.execute(
                    select(Connection.status, func.count()).group_by(Connection.status)
                ):
                    by_status.add_metric([status], count)
                for chain_id, seq in session.execute(
                    select(AuditEvent.chain_id, func.max(AuditEvent.chain_seq))
                    .where(AuditEvent.chain_seq.is_not(None))
                    .group_by(AuditEvent.chain_id)
                ):
                    label = "system" if chain_id == SYSTEM_CHAIN else str(chain_id)
                    head.add_metric([label], seq or 0)
        except SQLAlchemyError:
            pass  # the counters still answer while the database is down
        yield by_status
        yield head
        yield checkpoint_seq
        yield checkpoint_mac


def _allowed() -> bool:
    settings = current_app.config["BROKER"]
    auth = request.headers.get("Authorization", "")
    if settings.METRICS_TOKEN and auth.startswith("Bearer "):
        return hmac.compare_digest(auth[7:].encode(), settings.METRICS_TOKEN.encode())
    address = client_ip(request, settings.TRUSTED_PROXIES)
    return bool(settings.METRICS_IP_RANGES) and ip_in(address, settings.METRICS_IP_RANGES)


@bp.get("/metrics")
def metrics() -> Response:
    """Expose metrics to an allowed IP or the bearer of BROKER_METRICS_TOKEN."""
    if not _allowed():
        raise Forbidden("metrics are not available to this caller")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    scrape = CollectorRegistry()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    scrape.register(DatabaseCollector(app))
    for make in app.extensions.get(COLLECTORS, ()):
        scrape.register(make(app))
    body += generate_latest(scrape)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])


def add_collector(app: Flask, make: Callable[[Flask], Collector]) -> None:
    """Have /metrics also read a collector of a higher package (it is built per scrape)."""
    app.extensions.setdefault(COLLECTORS, []).append(make)


def init_app(app: Flask) -> None:
    """Register /metrics."""
    app.register_blueprint(bp)
