"""Access tokens for jobs: the hand-out decision, the store, the single-flight refresh (§7, §8)."""

from broker.tokens.handout import Handout, TokenRequest
from broker.tokens.service import EXTENSION, TokenService, Want, get_tokens

__all__ = ["EXTENSION", "Handout", "TokenRequest", "TokenService", "Want", "get_tokens"]
