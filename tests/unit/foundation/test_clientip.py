"""Client IP: trusted proxies by CIDR only, forged headers ignored, IPv6 and mapped IPv4."""

from __future__ import annotations

import ipaddress

import pytest

from broker.clientip import UNSPECIFIED, client_ip, ip_in, parse_cidrs, parse_hop

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


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"), (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7:443", "198.51.100.7"), ("198.51.100.7:0", "198.51.100.7"),
        ("2001:db8::5", "2001:db8::5"), ("[2001:db8::5]", "2001:db8::5"),
        ("[2001:db8::5]:8443", "2001:db8::5"), ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ("unknown", None), ("_hidden", None), ("_SEVKISEK", None), ("", None), ("junk", None),
        ("198.51.100.7:", None), ("198.51.100.7:http", None), ("198.51.100.7:123456", None),
        ("198.51.100.7:８０", None), ("[198.51.100.7]", None), ("[198.51.100.7]:80", None),
        ("[2001:db8::5", None), ("[2001:db8::5]80", None), ("[2001:db8::5]:", None),
        ("2001:db8::5]", None), ("fe80::1%eth0", None), ("[fe80::1%eth0]:80", None),
        ("198.51.100.7:80:80", None), ("198.51.100.300", None), ("for=198.51.100.7", None),
    ],
)
def test_hop_forms(hop: str, expected: str | None) -> None:
    parsed = parse_hop(hop)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize(
    "header",
    ["198.51.100.7, junk", "unknown", "_hidden, 10.2.2.2", "198.51.100.7, [::1", "unknown, ,"],
)
def test_an_unparsable_hop_fails_closed_not_to_the_proxy(header: str) -> None:
    for peer in ("10.1.1.1", "fd00::1"):
        assert client_ip({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": header}, PROXIES) \
            == UNSPECIFIED
    assert not ip_in(UNSPECIFIED, ["10.0.0.0/8", "127.0.0.0/8", "::/0"])


def test_ported_hops_are_the_client() -> None:
    assert ip({"REMOTE_ADDR": "10.1.1.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7:5123"}) \
        == "198.51.100.7"
    assert ip({"REMOTE_ADDR": "10.1.1.1",
               "HTTP_X_FORWARDED_FOR": "[2001:db8::5]:5123, 10.2.2.2:80"}) == "2001:db8::5"


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
