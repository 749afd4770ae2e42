"""Webhooks: registration with validation, and signed deliveries the worker retries (§9)."""

from broker.webhooks.delivery import EVENTS, UnsafeTarget, add_webhook, deliver_due, enqueue, sign
from broker.webhooks.registry import (
    Added,
    add,
    disable,
    get_webhook,
    list_webhooks,
    recent_deliveries,
)

__all__ = [
    "EVENTS", "Added", "UnsafeTarget", "add", "add_webhook", "deliver_due", "disable",
    "enqueue", "get_webhook", "list_webhooks", "recent_deliveries", "sign",
]
