"""The caller's client certificate: from our own TLS listener, or from a trusted proxy's header.

A proxy's header is believed only from BROKER_MTLS_PROXIES (a list of its own, not the
X-Forwarded-For proxies) and is always re-verified against the client's own CA: a proxy's
trust store is shared by every tenant, so what it accepted proves nothing here.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from flask import Request

from broker.clientip import parse_ip
from broker.config import Network
from broker.tls import CertificateRejected, Presented

# The header each proxy form puts the leaf in (and the chain, where it sends one).
HEADERS = {
    "rfc9440": ("Client-Cert", "Client-Cert-Chain"),
    "nginx": ("X-SSL-Client-Cert", None),  # $ssl_client_escaped_cert
    "envoy": ("X-Forwarded-Client-Cert", None),  # Cert="…" and Chain="…" inside
}
FORMATS = tuple(HEADERS)
MAX_HEADER = 32 * 1024
MAX_CHAIN = 5


def presented(request: Request, proxies: Iterable[Network], form: str) -> Presented | None:
    """Return the certificate the caller presented, None if none; raise if one is unusable."""
    leaf_header, chain_header = HEADERS[form]
    headers = [h for h in (leaf_header, chain_header) if h and h in request.headers]
    if headers:
        peer = parse_ip(request.remote_addr or "")
        if peer is None or not any(peer.version == n.version and peer in n for n in proxies):
            raise CertificateRejected("header_from_untrusted_peer")
        return _from_header(request, form)
    return _from_socket(request.environ)


def _from_socket(environ: dict[str, Any]) -> Presented | None:
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    return Presented(x509.load_der_x509_certificate(der), (), "tls")


def _from_header(request: Request, form: str) -> Presented:
    leaf_header, chain_header = HEADERS[form]
    raw = request.headers.get(leaf_header, "")
    chain_raw = request.headers.get(chain_header, "") if chain_header else ""
    if len(raw) + len(chain_raw) > MAX_HEADER:
        raise CertificateRejected("malformed_header")
    try:
        if form == "rfc9440":
            leaf = x509.load_der_x509_certificate(_sf_binary(raw))
            chain = [x509.load_der_x509_certificate(_sf_binary(item))
                     for item in chain_raw.split(",") if item.strip()]
        elif form == "nginx":
            leaf, chain = x509.load_pem_x509_certificate(unquote(raw).encode()), []
        else:
            fields = _xfcc(raw)
            leaf = x509.load_pem_x509_certificate(unquote(fields.get("cert", "")).encode())
            chain_pem = unquote(fields.get("chain", "")).encode()
            chain = x509.load_pem_x509_certificates(chain_pem)[1:] if chain_pem else []
    except (ValueError, binascii.Error):
        raise CertificateRejected("malformed_header") from None
    if len(chain) > MAX_CHAIN:
        raise CertificateRejected("malformed_header")
    return Presented(leaf, tuple(chain), "proxy")


def _sf_binary(item: str) -> bytes:
    """Decode an RFC 8941 byte sequence, `:base64:`."""
    item = item.strip()
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise ValueError("not a structured-field byte sequence")
    return base64.b64decode(item[1:-1], validate=True)


def _xfcc(value: str) -> dict[str, str]:
    """Read the last element of Envoy's X-Forwarded-Client-Cert: the one its nearest hop added."""
    element = _split_outside_quotes(value, ",")[-1]
    out: dict[str, str] = {}
    for part in _split_outside_quotes(element, ";"):
        key, _, val = part.partition("=")
        out[key.strip().lower()] = val.strip().strip('"')
    return out


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts
