"""Access tokens for jobs: the hand-out decision, the store, the single-flight refresh (§7, §8)."""

from broker.tokens.duties import RefreshWindows, refresh_due
from broker.tokens.handout import Handout, TokenRequest
from broker.tokens.refresh import Lease
from broker.tokens.service import EXTENSION, TokenService, Want, get_tokens, init_app
from broker.tokens.store import HELD_REASON

__all__ = ["EXTENSION", "HELD_REASON", "Handout", "Lease", "RefreshWindows", "TokenRequest",
           "TokenService", "Want", "get_tokens", "init_app", "refresh_due"]
