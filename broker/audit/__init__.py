"""The audit log: record events in the caller's transaction, chain them, verify, query (§10)."""

from broker.audit.chains import (
    Chained,
    ChainWindows,
    Checkpoint,
    Verdict,
    chain,
    chain_key,
    check_checkpoint,
    checkpoint,
    parse_checkpoint,
    verify,
)
from broker.audit.duties import chain_audit, fold_audit
from broker.audit.events import (
    INSERT,
    event_values,
    insert_event,
    record,
)
from broker.audit.queries import (
    OUTCOMES,
    actions,
    chain_status,
    export_csv,
    page_of_events,
    parse_filter,
)
from broker.audit.rollup import Tallies, Tally, fold, hour_of, tallies, waiting

__all__ = [
    "INSERT", "OUTCOMES", "ChainWindows", "Chained", "Checkpoint", "Verdict", "actions",
    "Tallies", "Tally", "chain", "chain_audit", "chain_key", "chain_status", "check_checkpoint",
    "checkpoint", "event_values", "export_csv", "fold", "fold_audit", "hour_of",
    "insert_event", "page_of_events", "parse_checkpoint", "parse_filter", "record", "tallies",
    "verify", "waiting",
]
