"""The caller's IP: the socket peer, unless it is a trusted proxy (DESIGN §7)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Request

from broker.config import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNSPECIFIED = ipaddress.IPv4Address(0)  # a peer with no address matches no range but "any"


def parse_ip(text: str) -> IPAddress | None:
    """Parse an address, unwrapping IPv4-mapped IPv6; None when it is not one."""
    return _address(text.strip().strip("[]"))


@functools.lru_cache(maxsize=4096)  # the same few peers (proxies, jobs) ask again and again
def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_hop(text: str) -> IPAddress | None:
    """Parse one X-Forwarded-For hop: `ip`, `ip:port`, `[v6]` or `[v6]:port`; None otherwise."""
    hop, port = text.strip(), None
    if hop.startswith("["):
        inside, bracket, rest = hop[1:].partition("]")
        if not bracket or ":" not in inside or (rest and not rest.startswith(":")):
            return None  # brackets hold IPv6 only, and only a port may follow them
        hop, port = inside, (rest[1:] if rest else None)
    elif hop.count(":") == 1:
        hop, _, port = hop.partition(":")  # one colon is IPv4 and a port; IPv6 has several
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    if "%" in hop:
        return None  # a zone id names a link of the sender's, not an address we can judge
    return _address(hop)


def _trusted(address: IPAddress, proxies: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_ip(source: Request | Mapping[str, Any], trusted_proxies: Iterable[Network]) -> IPAddress:
    """Return the peer, or when the peer is a trusted proxy the first untrusted X-Forwarded-For hop.

    Forwarded, X-Real-IP and the like are ignored: only X-Forwarded-For from a trusted peer
    counts, read from the right so a client cannot prepend a forged address. A hop that is no
    address (`unknown`, an obfuscated name, garbage) before the first untrusted one fails closed
    to UNSPECIFIED: the caller is unknown, so it matches no IP range but "any", and never
    passes for the proxy itself.
    """
    environ = source.environ if isinstance(source, Request) else source
    proxies = tuple(trusted_proxies)
    peer = parse_ip(str(environ.get("REMOTE_ADDR") or "")) or UNSPECIFIED
    if not proxies or not _trusted(peer, proxies):
        return peer
    header = str(environ.get("HTTP_X_FORWARDED_FOR") or "")
    current = peer
    for hop in reversed([h for h in header.split(",") if h.strip()]):
        address = parse_hop(hop)
        if address is None:
            return UNSPECIFIED
        current = address
        if not _trusted(address, proxies):
            return address
    return current


def ip_in(address: IPAddress, cidrs: Iterable[str | Network]) -> bool:
    """Say whether an address lies in any of the CIDRs; an empty list allows every address."""
    networks = [
        c if not isinstance(c, str) else ipaddress.ip_network(c, strict=False) for c in cidrs
    ]
    if not networks:
        return True
    return any(address.version == net.version and address in net for net in networks)


def parse_cidrs(values: Iterable[str]) -> list[str]:
    """Validate and normalise CIDRs for storage; raise ValueError naming the bad one."""
    out = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"not an IP range: {value[:60]!r}") from None
    return out
