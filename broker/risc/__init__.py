"""Cross-Account Protection (RISC): verify Google's security events and act on them."""

from broker.risc.actions import KNOWN, SESSION_END, short_type
from broker.risc.registration import default_receiver, register, status, verify
from broker.risc.service import (
    Receipt,
    purge_security_events,
    receive,
    security_event_counts,
)
from broker.risc.stream import ServiceAccount, StreamError, check_receiver, load_service_account
from broker.risc.verify import MAX_BODY

__all__ = [
    "KNOWN", "MAX_BODY", "SESSION_END", "Receipt", "ServiceAccount", "StreamError",
    "check_receiver", "default_receiver", "load_service_account", "purge_security_events",
    "receive", "register", "security_event_counts", "short_type", "status", "verify",
]
