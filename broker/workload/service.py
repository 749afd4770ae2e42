"""The exchange's one service on the workload side: identify the job, audit every refusal."""

from __future__ import annotations

import logging
import uuid

from flask import Flask

from broker import audit, metrics
from broker.clock import get_clock
from broker.db import get_db
from broker.errors import InvalidRequest, UpstreamUnavailable
from broker.workload.verify import IssuerUnavailable, Match, Rule, SubjectRejected, identify

REJECTED = "subject token rejected"
log = logging.getLogger(__name__)


def admit_subject(app: Flask, token: str, *, ip: str) -> Match:
    """Return the rule a subject token satisfies, or raise the refusal the caller sees.

    Every refusal is audited once the token names an issuer some rule trusts: in that rule's
    tenant, in each tenant when rules of several matched (a configuration error), and in the
    system's chain when rules of several tenants share the issuer (no tenant sees another's
    subjects). A token naming no trusted issuer is only logged and counted: anyone can send one.
    """
    now = get_clock(app)()
    try:
        return identify(app, token, now)
    except SubjectRejected as rejected:
        metrics.WORKLOAD_REJECTIONS.labels(reason=rejected.reason.split(":")[0]).inc()
        ambiguous = rejected.reason == "ambiguous_rules"
        tenants = {rule.tenant_id for rule in rejected.rules}
        if ambiguous and len(tenants) > 1:
            log.error("workload token matches trust rules of %d tenants: a configuration error",
                      len(tenants), extra={"event": "workload_ambiguous",
                                           "rules": [str(r.id) for r in rejected.rules]})
        else:
            log.warning("subject token rejected (%s)", rejected.reason,
                        extra={"event": "workload_rejected", "reason": rejected.reason})
        if rejected.rules:
            targets = tenants if ambiguous or len(tenants) == 1 else {None}
            _audit(app, rejected.rules, rejected.reason, rejected.subject, ip, targets)
        raise InvalidRequest(REJECTED) from None
    except IssuerUnavailable as unavailable:
        metrics.WORKLOAD_REJECTIONS.labels(reason="issuer_unavailable").inc()
        log.warning("workload issuer unavailable", extra={"event": "workload_issuer"})
        tenants = {rule.tenant_id for rule in unavailable.rules}
        _audit(app, unavailable.rules, "issuer_unavailable", None, ip,
               tenants if len(tenants) == 1 else {None})
        raise UpstreamUnavailable("The token's issuer could not be reached; retry later.",
                                  headers={"Retry-After": "30"}) from None


def _audit(
    app: Flask, rules: tuple[Rule, ...], reason: str, subject: str | None, ip: str,
    tenants: set[uuid.UUID] | set[None] | set[uuid.UUID | None],
) -> None:
    with get_db(app).transaction() as session:
        for tenant_id in tenants:
            mine = [r for r in rules if tenant_id is None or r.tenant_id == tenant_id]
            audit.record(
                session, action="workload.exchange", tenant_id=tenant_id,
                actor_type="workload", actor_id=subject[:64] if subject else None, ip=ip,
                outcome="error" if reason == "issuer_unavailable" else "denied",
                reason=reason[:60],
                details={"issuer": mine[0].issuer[:200] if mine else "",
                         "subject": subject or "", "rules": [str(r.id) for r in mine]},
            )
