"""The one SSRF rule for webhook targets, at registration and again at send time (issue 11.8)."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Prefixes whose last 32 bits are an IPv4 address a packet may be delivered to: deprecated
# IPv4-compatible addresses and NAT64 (well-known and local-use).
_LOW_32_PREFIXES = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


def embedded(address: Address) -> list[Address]:
    """Return the IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64), else it.

    A packet to such an address can end up at the IPv4 address inside it, so that address is
    the one whose reachability counts.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            return [address.sixtofour]
        if address.teredo is not None:
            server, client = address.teredo
            return [server, client]
        if any(address in prefix for prefix in _LOW_32_PREFIXES):
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address]


def is_public(address: Address) -> bool:
    """Say whether the broker may call this address: globally reachable, unwrapped first."""
    return all(inner.is_global and not inner.is_multicast for inner in embedded(address))


def allowed(address: Address, *, allow_private: bool) -> bool:
    """Say whether a webhook may be sent to this address under the deployment's setting."""
    return allow_private or is_public(address)


def literal(host: str) -> Address | None:
    """Return the address a URL host names literally, or None for a DNS name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
