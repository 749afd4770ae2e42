"""Sign id_tokens with rotating RS256 keys and publish them as JWKS and X.509 certificates."""

from __future__ import annotations

import datetime
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet, RSAKey

from broker.emulator.state import EmulatorState

# Google publishes two or three keys at a time; retired keys stay verifiable for a while.
MAX_PUBLISHED_KEYS = 3


class KeyRing:
    """The emulator's signing keys, stored as private JWKs in the state (newest last)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._certs: dict[str, str] = {}
        # Importing a private JWK validates the RSA key, which is slow: do it once per key.
        self._imported: dict[str, RSAKey] = {}

    def ensure(self) -> None:
        """Create the first signing key unless one exists."""
        with self.state.lock:
            if not self.state.keys:
                self.rotate()

    def rotate(self) -> str:
        """Make a new key current, drop keys beyond the published few, and return its kid."""
        kid = secrets.token_hex(20)
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        with self.state.lock:
            self.state.keys.append(dict(key.as_dict(private=True)))
            del self.state.keys[:-MAX_PUBLISHED_KEYS]
            self.state.save()
        return kid

    def _keys(self) -> list[RSAKey]:
        with self.state.lock:
            keys = []
            for raw in self.state.keys:
                kid = str(raw["kid"])
                if kid not in self._imported:
                    self._imported[kid] = RSAKey.import_key(dict(raw))
                keys.append(self._imported[kid])
            return keys

    def current_kid(self) -> str:
        """Return the kid that signs new tokens."""
        with self.state.lock:
            return str(self.state.keys[-1]["kid"])

    def jwks(self) -> dict[str, Any]:
        """Return the public JWK Set, newest key first."""
        public = [dict(k.as_dict(private=False)) for k in reversed(self._keys())]
        return {"keys": public}

    def x509_certificates(self) -> dict[str, str]:
        """Return `{kid: PEM certificate}` as Google's `/oauth2/v1/certs` does."""
        answer: dict[str, str] = {}
        with self.state.lock:
            for key in reversed(self._keys()):
                kid = str(key.kid)
                if kid not in self._certs:
                    self._certs[kid] = _self_signed(key, kid)
                answer[kid] = self._certs[kid]
        return answer

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """Return `claims` as a JWT signed with the current key."""
        key = self._keys()[-1]
        header = {"alg": "RS256", "kid": str(key.kid), "typ": typ}
        return jwt.encode(header, claims, key)

    def verify(self, token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Return `(header, claims)` of a JWT signed by a published key, else None."""
        try:
            published: list[Key] = list(self._keys())
            decoded = jwt.decode(token, KeySet(published), algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        return dict(decoded.header), dict(decoded.claims)


def _self_signed(key: RSAKey, kid: str) -> str:
    private = key.private_key
    if not isinstance(private, rsa.RSAPrivateKey):
        raise TypeError("signing keys must be private RSA keys")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"google-emulator-{kid[:12]}")])
    # Wall-clock validity: nothing checks it, and the emulator's clock offset must not break it.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
