"""Gmail through the broker: strict egress, the quota governor, proxy tokens, the call itself."""

from broker.proxy.egress import BatchRefused, Egress, EgressRefused, raw_path, resolve
from broker.proxy.quota import Budget, MemoryGovernor, RedisGovernor, make_governor
from broker.proxy.service import CHUNK, MAX_BODY, REPLAY_MAX, Proxy, Turn, get_proxy
from broker.proxy.tokens import ProxyGrant, ProxyTokens

__all__ = ["CHUNK", "MAX_BODY", "REPLAY_MAX", "BatchRefused", "Budget", "Egress",
           "EgressRefused", "MemoryGovernor", "Proxy", "ProxyGrant", "ProxyTokens",
           "RedisGovernor", "Turn", "get_proxy", "make_governor", "raw_path", "resolve"]
