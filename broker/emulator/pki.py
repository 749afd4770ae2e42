"""A throw-away PKI for the emulator over TLS: a root, an intermediate and a server leaf."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("localhost", "127.0.0.1", "::1")
ROOT, CHAIN, KEY = "emulator-root.pem", "emulator-chain.pem", "emulator-key.pem"
LIFETIME = dt.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        """Return the certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the private key in unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Google emulator (NOT Google)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    common_name: str, *, issuer: Issued | None = None, ca: bool = False,
    hosts: tuple[str, ...] = (), not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None, client: bool = False,
) -> Issued:
    """Issue a CA (self-signed without an issuer), or a leaf for `hosts`: a server's, or with
    `client` a client's (for mutual TLS)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    """Where a PKI's files are: the root to trust, the chain to serve and its key."""

    root: Path
    chain: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a server context serving the chain (TLS 1.2 and newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.chain, self.key)
        return context


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def make_pki(folder: Path, hosts: tuple[str, ...] = HOSTS) -> Pki:
    """Make (or reuse while the leaf has a day left) a root, intermediate and leaf in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder / ROOT, folder / CHAIN, folder / KEY)
    if all(p.exists() for p in (pki.root, pki.chain, pki.key)):
        try:
            leaf = x509.load_pem_x509_certificates(pki.chain.read_bytes())[0]
        except ValueError:
            leaf = None
        if leaf and leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
            return pki  # the root people were told to trust stays the same across restarts
    root = issue("emulator root CA", ca=True)
    intermediate = issue("emulator intermediate CA", issuer=root, ca=True)
    leaf_issued = issue(hosts[0], issuer=intermediate, hosts=hosts)
    _write(pki.key, leaf_issued.key_pem(), 0o600)
    _write(pki.chain, leaf_issued.pem() + intermediate.pem())
    _write(pki.root, root.pem())
    return pki
