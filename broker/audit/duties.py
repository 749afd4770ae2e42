"""The worker's audit duty: append settled events to each tenant's keyed chain."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select

from broker.audit.events import chain
from broker.clock import get_clock
from broker.db import get_db
from broker.keys import get_keys
from broker.models import AuditEvent


@dataclass(frozen=True)
class ChainWindows:
    """How old an event must be before it is chained."""

    # `at` is stamped before its transaction commits: the lag lets such late commits land
    # before the chain passes their time.
    audit_lag: dt.timedelta = dt.timedelta(seconds=2)


def chain_audit(app: Flask, w: ChainWindows | None = None) -> int:
    """Append events older than the lag to each tenant's chain."""
    w = w or ChainWindows()
    db, keys = get_db(app), get_keys(app)
    older_than = get_clock(app)() - w.audit_lag
    with db.transaction(write=False) as session:
        tenants = list(session.scalars(
            select(AuditEvent.tenant_id).distinct().where(AuditEvent.chain_seq.is_(None))
        ))
    total = 0
    for tenant_id in tenants:
        with db.transaction() as session:
            total += chain(session, keys, tenant_id, older_than=older_than)
    return total
