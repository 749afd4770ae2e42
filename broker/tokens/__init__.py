"""Access tokens for jobs: the hand-out decision, the store, the single-flight refresh (§7, §8)."""

from broker.tokens.duties import RefreshWindows, refresh_due
from broker.tokens.handout import Handout, TokenRequest
from broker.tokens.refresh import Lease
from broker.tokens.service import EXTENSION, TokenService, Want, get_tokens, init_app

__all__ = ["EXTENSION", "Handout", "Lease", "RefreshWindows", "TokenRequest", "TokenService",
           "Want", "get_tokens", "init_app", "refresh_due"]
