"""The worker's key duty: move rows off older tenant data keys, then retire those keys."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select

from broker.db import get_db
from broker.keys.extension import get_keys
from broker.keys.service import reseal_tenant
from broker.models import DataKey


def reseal(app: Flask) -> int:
    """Re-seal rows of tenants that have older data keys still in use."""
    db = get_db(app)
    with db.transaction(write=False) as session:
        tenants = list(session.scalars(
            select(DataKey.tenant_id).where(DataKey.tenant_id.is_not(None),
                                            DataKey.retired_at.is_(None))
            .group_by(DataKey.tenant_id).having(func.count() > 1)
        ))
    return sum(reseal_tenant(get_keys(app), db, t).resealed for t in tenants if t is not None)
