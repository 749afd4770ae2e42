"""Webhooks: registration with validation, and signed deliveries the worker retries (§9)."""

from broker.webhooks.delivery import EVENTS, UnsafeTarget, deliver_due, enqueue, pin, sign
from broker.webhooks.registry import (
    Added,
    add,
    check_url,
    disable,
    get_webhook,
    list_webhooks,
    recent_deliveries,
    safe_url,
)
from broker.webhooks.targets import is_public

__all__ = [
    "EVENTS", "Added", "UnsafeTarget", "add", "check_url", "deliver_due", "disable", "enqueue",
    "get_webhook", "is_public", "list_webhooks", "pin", "recent_deliveries", "safe_url", "sign",
]
