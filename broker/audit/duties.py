"""The worker's audit duty: append settled events to their chains and publish a checkpoint."""

from __future__ import annotations

from flask import Flask

from broker.audit.chains import ChainWindows, chain, keep_checkpoint, log_checkpoint
from broker.clock import get_clock
from broker.db import get_db
from broker.keys import get_keys


def chain_audit(app: Flask, w: ChainWindows | None = None) -> int:
    """Chain events older than the lag, in insertion order; log and keep the new checkpoint."""
    w = w or ChainWindows()
    db, keys = get_db(app), get_keys(app)
    older_than = get_clock(app)() - w.audit_lag
    point = None
    with db.transaction() as session:
        done = chain(session, keys, older_than=older_than, windows=w)
        if done.chained:
            point = keep_checkpoint(session, keys)
    if point is not None:  # only now is it the database's state
        log_checkpoint(point)
    return done.chained
