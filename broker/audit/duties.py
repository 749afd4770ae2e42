"""The worker's audit duties: chain settled events (and publish a checkpoint), fold counts."""

from __future__ import annotations

from flask import Flask

from broker.audit.chains import (
    ChainWindows,
    chain,
    chained_top,
    keep_checkpoint,
    log_checkpoint,
)
from broker.audit.rollup import fold, folded_up_to
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


# Batches one pass may fold (a million events at most), so a backlog never stalls the others.
FOLD_PASSES = 50


def fold_audit(app: Flask) -> int:
    """Fold chained events into the overview's hourly counts, batch by batch; return how many."""
    total = 0
    for _ in range(FOLD_PASSES):
        with get_db(app).transaction() as session:
            total += fold(session)
            behind = folded_up_to(session) < chained_top(session)
        if not behind:
            break
    return total
