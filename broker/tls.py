"""TLS in one place: the context every callout verifies its peer with, and chain-file checks."""

from __future__ import annotations

import datetime as dt
import hmac
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

# TLS 1.2 only with forward-secret AEAD suites; TLS 1.3's suites are all AEAD and preferred.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsConfigError(ValueError):
    """A CA bundle or certificate file that cannot be used, said in one line."""


# The contexts built so far, by CA bundle (None: the system store); see client_context.
_CONTEXTS: dict[str | None, ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def client_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Return the context of every outbound call: chain to a trusted root, validity, host name.

    `ca_bundle` (BROKER_CA_BUNDLE) replaces the system store. Built once per bundle: loading a
    store costs milliseconds, and a context is safe to share between threads.
    """
    context = _CONTEXTS.get(ca_bundle)
    if context is None:
        # Under a lock: a worker's 48 threads all make their first call at once, and each
        # loaded the store itself (a second of CPU per process, issue 18).
        with _CONTEXTS_LOCK:
            context = _CONTEXTS.get(ca_bundle)
            if context is None:
                context = _CONTEXTS[ca_bundle] = _new_client_context(ca_bundle)
    return context


def _new_client_context(ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # host name and chain checks on
    context.check_hostname, context.verify_mode = True, ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    if not ca_bundle:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot use CA bundle {ca_bundle}: {exc}") from None
    return context


def thumbprint(cert: x509.Certificate) -> str:
    """Return a certificate's SHA-256 thumbprint in hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe(cert: x509.Certificate) -> str:
    """Return a certificate's subject, issuer and end of validity in one line."""
    return (f"subject {cert.subject.rfc4514_string() or '(empty)'}, issuer "
            f"{cert.issuer.rfc4514_string() or '(empty)'}, valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")


@dataclass
class ChainReport:
    """What a chain file holds and what is wrong with it, each problem with what to do."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Say whether the chain can be served as it is."""
        return not self.problems


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Read every certificate of a PEM file, in file order; raise TlsConfigError if none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError("no PEM certificate could be read (expected -----BEGIN "
                             "CERTIFICATE----- blocks)") from None
    return certs


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check_chain(
    pem: bytes, now: dt.datetime, key_pem: bytes | None = None,
    key_password: bytes | None = None,
) -> ChainReport:
    """Check a served chain: leaf first, each signed by the next, no root, valid, key matching."""
    report = ChainReport(load_chain(pem))
    certs = report.certificates
    for i, cert in enumerate(certs):
        if cert.not_valid_before_utc > now:
            report.problems.append(f"certificate {i + 1} ({describe(cert)}) is not valid "
                                   "before " f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z: "
                                   "wait, or fix the clock of the machine that issued it")
        if cert.not_valid_after_utc < now:
            report.problems.append(f"certificate {i + 1} ({describe(cert)}) has expired: "
                                   "renew it")
    if is_ca(certs[0]):
        report.problems.append("the first certificate is a CA, not the server's leaf: put the "
                               "leaf first, then each intermediate")
    for i, (child, parent) in enumerate(zip(certs, certs[1:], strict=False)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            report.problems.append(
                f"certificate {i + 1} is not signed by certificate {i + 2}: order the file "
                "leaf, then its issuer, then that one's issuer, and drop unrelated certificates"
            )
    if len(certs) > 1 and _self_signed(certs[-1]):
        report.problems.append("the file ends with a self-signed root: remove it (clients "
                               "trust roots from their own store; sending one is wasted "
                               "bytes at best)")
    if key_pem is not None:
        _check_key(report, certs[0], key_pem, key_password)
    return report


def is_ca(cert: x509.Certificate) -> bool:
    """Say whether a certificate is a CA's (basicConstraints CA:TRUE)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_key(
    report: ChainReport, leaf: x509.Certificate, key_pem: bytes, password: bytes | None
) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        report.problems.append("the key file holds no readable private key (PEM, unencrypted "
                               "or with the right password)")
        return
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, public)
    theirs = leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    if ours != theirs:
        report.problems.append("the key does not match the first certificate: use the key the "
                               "leaf was issued for, or put that key's certificate first")


# --- Client certificates (RFC 8705) ----------------------------------------------------------

MATCHES = ("subject_dn", "san_dns", "san_uri", "san_ip", "san_email")


class CertificateRejected(Exception):
    """A client certificate that does not authenticate; `reason` goes to logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Presented:
    """A client certificate as a request brought it: the leaf, its intermediates, and how."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    via: str = "tls"  # "tls" (our own listener) or "proxy" (a trusted proxy's header)

    def digest(self) -> str:
        """Return a SHA-256 over the leaf and its chain, naming exactly what was verified."""
        summed = hashes.Hash(hashes.SHA256())
        for cert in (self.leaf, *self.chain):
            summed.update(cert.fingerprint(hashes.SHA256()))
        return summed.finalize().hex()

    def audit(self) -> dict[str, str]:
        """Return what the audit records of the certificate (never the certificate itself)."""
        return {"cert_sha256": thumbprint(self.leaf), "cert_serial": f"{self.leaf.serial_number:x}",
                "cert_issuer": self.leaf.issuer.rfc4514_string()[:200], "cert_via": self.via}


def spki_sha256(cert: x509.Certificate) -> str:
    """Return the SHA-256 of a certificate's public key (SubjectPublicKeyInfo), in hex."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def normalise_match(kind: str, value: str) -> str:
    """Return the stored form of a leaf-name rule, or raise ValueError saying what is wrong."""
    value = value.strip()
    if kind not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}")
    if not value or len(value) > 500:
        raise ValueError("a certificate name to match is 1-500 characters")
    if kind == "subject_dn":
        try:
            return x509.Name.from_rfc4514_string(value).rfc4514_string()
        except ValueError:
            raise ValueError("a subject DN like CN=nightly-export,O=Acme") from None
    if kind == "san_ip":
        return str(ip_address(value))
    if kind == "san_dns":
        return value.lower().rstrip(".")
    if kind == "san_email":
        local, _, domain = value.rpartition("@")
        if not local:
            raise ValueError("an email address like job@acme.com")
        return f"{local}@{domain.lower()}"
    return value


def leaf_matches(leaf: x509.Certificate, kind: str, value: str) -> bool:
    """Say whether the leaf itself carries the name (no CN fallback, no patterns)."""
    if kind == "subject_dn":
        return leaf.subject.rfc4514_string() == value
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if kind == "san_dns":
        return value in (n.lower().rstrip(".") for n in names.get_values_for_type(x509.DNSName))
    if kind == "san_uri":
        return value in names.get_values_for_type(x509.UniformResourceIdentifier)
    if kind == "san_ip":
        return value in (str(a) for a in names.get_values_for_type(x509.IPAddress))
    return value in (normalise_match("san_email", e)
                     for e in names.get_values_for_type(x509.RFC822Name) if "@" in e)


def verify_client(
    presented: Presented, anchor: x509.Certificate, now: dt.datetime
) -> None:
    """Verify a client chain to one CA (validity, signatures, client EKU); raise if not."""
    leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)  # DN-only leaves are fine
    verifier = (
        PolicyBuilder().store(Store([anchor])).time(now.replace(tzinfo=None))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(presented.leaf, list(presented.chain))
    except VerificationError as exc:
        raise CertificateRejected("chain_invalid") from exc


def pinned(presented: Presented, pems: list[str], now: dt.datetime) -> bool:
    """Say whether the leaf is one of the pinned self-signed certificates, and still valid."""
    if not (presented.leaf.not_valid_before_utc <= now <= presented.leaf.not_valid_after_utc):
        raise CertificateRejected("expired")
    offered = thumbprint(presented.leaf)
    found = False
    for pem in pems:
        try:
            ours = thumbprint(x509.load_pem_x509_certificate(pem.encode()))
        except ValueError:
            continue
        found |= hmac.compare_digest(offered, ours)
    return found


def client_context_with_certificate(
    ca_bundle: str | None, cert_pem: str, key_pem: bytes
) -> ssl.SSLContext:
    """Return a callout context that also presents a client certificate (two-way TLS).

    `ssl` loads a key only from a file: it is written to a private temporary folder, loaded
    and deleted at once. A fresh context each time: the shared one must not carry a key.
    """
    context = _new_client_context(ca_bundle)
    with tempfile.TemporaryDirectory(prefix="broker-tls-") as folder:  # mode 0700
        path = Path(folder) / "client.pem"
        path.touch(mode=0o600)
        path.write_bytes(key_pem + b"\n" + cert_pem.encode())
        context.load_cert_chain(path)
    return context
