"""The audit log: record events in the caller's transaction, chain them, verify, query (§10)."""

from broker.audit.duties import ChainWindows, chain_audit
from broker.audit.events import (
    INSERT,
    Verdict,
    chain,
    event_values,
    insert_event,
    record,
    verify,
)
from broker.audit.queries import (
    OUTCOMES,
    actions,
    chain_status,
    export_csv,
    page_of_events,
    parse_filter,
)

__all__ = [
    "INSERT", "OUTCOMES", "ChainWindows", "Verdict", "actions", "chain", "chain_audit",
    "chain_status", "event_values", "export_csv", "insert_event", "page_of_events",
    "parse_filter", "record", "verify",
]
