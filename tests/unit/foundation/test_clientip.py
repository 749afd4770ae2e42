"""Client IP: trusted proxies by CIDR only, forged headers ignored, IPv6 and mapped IPv4."""

from __future__ import annotations

import ipaddress

import pytest

from broker.clientip import client_ip, ip_in, parse_cidrs

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def ip(environ: dict[str, str], proxies=PROXIES) -> str:  # type: ignore[no-untyped-def]
    return str(client_ip(environ, proxies))


def test_untrusted_peer_is_the_client_whatever_the_headers() -> None:
    forged = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "127.0.0.1",
              "HTTP_FORWARDED": "for=127.0.0.1", "HTTP_X_REAL_IP": "127.0.0.1"}
    assert ip(forged) == "203.0.113.9"
    assert ip(forged, ()) == "203.0.113.9"


def test_trusted_proxy_chain_is_walked_from_the_right() -> None:
    environ = {"REMOTE_ADDR": "10.1.1.1",
               "HTTP_X_FORWARDED_FOR": "127.0.0.1, 198.51.100.7, 10.2.2.2"}
    assert ip(environ) == "198.51.100.7"


def test_only_x_forwarded_for_counts_behind_a_proxy() -> None:
    environ = {"REMOTE_ADDR": "10.1.1.1", "HTTP_X_REAL_IP": "198.51.100.7",
               "HTTP_FORWARDED": "for=198.51.100.8"}
    assert ip(environ) == "10.1.1.1"


def test_garbage_hop_stops_the_walk() -> None:
    environ = {"REMOTE_ADDR": "10.1.1.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7, junk"}
    assert ip(environ) == "10.1.1.1"


def test_ipv4_mapped_and_ipv6() -> None:
    assert ip({"REMOTE_ADDR": "::ffff:203.0.113.5"}) == "203.0.113.5"
    assert ip({"REMOTE_ADDR": "fd00::1", "HTTP_X_FORWARDED_FOR": "2001:db8::5"}) == "2001:db8::5"
    assert ip({"REMOTE_ADDR": "::ffff:10.0.0.1", "HTTP_X_FORWARDED_FOR": "::ffff:192.0.2.1"}) \
        == "192.0.2.1"


@pytest.mark.parametrize(
    ("address", "cidrs", "expected"),
    [("192.0.2.1", [], True), ("192.0.2.1", ["192.0.2.0/24"], True),
     ("192.0.2.1", ["198.51.100.0/24"], False), ("2001:db8::1", ["192.0.2.0/24"], False),
     ("2001:db8::1", ["2001:db8::/32"], True)],
)
def test_ip_in(address: str, cidrs: list[str], expected: bool) -> None:
    assert ip_in(ipaddress.ip_address(address), cidrs) is expected


def test_cidrs_are_validated_and_normalised() -> None:
    assert parse_cidrs(["192.0.2.7/24", " 2001:DB8::/32 ", ""]) == ["192.0.2.0/24", "2001:db8::/32"]
    with pytest.raises(ValueError, match="not an IP range"):
        parse_cidrs(["300.1.1.1/8"])
