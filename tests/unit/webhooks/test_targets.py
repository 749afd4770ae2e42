"""One SSRF rule for webhook targets: registration and the send-time guard agree (issue 11.8)."""

from __future__ import annotations

import ipaddress

import pytest

from broker.errors import InvalidRequest
from broker.webhooks import UnsafeTarget, check_url, is_public, pin

REFUSED = [
    "10.0.0.5",                                  # private
    "127.0.0.1",                                 # loopback
    "169.254.169.254",                           # link-local (cloud metadata)
    "100.64.0.1",                                # shared address space (RFC 6598)
    "100.100.100.200",                           # a cloud's metadata inside 100.64.0.0/10
    "0.0.0.0",  # noqa: S104 - an address to refuse, never bound
    "224.0.0.1",                                 # multicast
    "::1",                                       # loopback
    "fe80::1",                                   # link-local
    "fc00::1",                                   # unique local
    "::ffff:10.0.0.5",                           # IPv4-mapped private
    "::ffff:127.0.0.1",                          # IPv4-mapped loopback
    "2002:0a00:0005::",                          # 6to4 wrapping 10.0.0.5
    "2002:6440:0001::1",                         # 6to4 wrapping 100.64.0.1
    "2001:0000:4136:e378:8000:63bf:f5ff:fffa",   # Teredo wrapping 10.0.0.5
    "2001:0000:4136:e378:8000:63bf:80ff:fffe",   # Teredo wrapping 127.0.0.1
    "::10.0.0.5",                                # IPv4-compatible (deprecated)
    "64:ff9b::10.0.0.5",                         # NAT64 of a private address
    "64:ff9b::100.100.100.200",                  # NAT64 of the metadata address
]
ACCEPTED = [
    "8.8.8.8",
    "2606:4700::1111",
    "::ffff:8.8.8.8",                            # IPv4-mapped public
    "2002:0808:0808::1",                         # 6to4 wrapping 8.8.8.8
    "64:ff9b::8.8.8.8",                          # NAT64 of a public address
]


def _url(address: str) -> str:
    return f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook"


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_at_registration_and_at_send(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(InvalidRequest, match="private"):
        check_url(_url(address), allow_private=False)
    with pytest.raises(UnsafeTarget):
        pin(_url(address), allow_private=False)


@pytest.mark.parametrize("address", ACCEPTED)
def test_public_addresses_pass_both_checks(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    assert check_url(_url(address), allow_private=False) == _url(address)
    assert ipaddress.ip_address(pin(_url(address), allow_private=False)) == (
        ipaddress.ip_address(address)
    )


@pytest.mark.parametrize("address", REFUSED[:3] + REFUSED[-3:])
def test_the_setting_allows_private_targets_in_both_checks(address: str) -> None:
    assert check_url(_url(address), allow_private=True) == _url(address)
    assert pin(_url(address), allow_private=True)


def test_a_name_resolving_to_loopback_is_refused_at_send() -> None:
    with pytest.raises(UnsafeTarget, match="non-public"):
        pin("https://localhost:8443/hook", allow_private=False)
