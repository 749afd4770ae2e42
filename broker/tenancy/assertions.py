"""private_key_jwt (RFC 7523 §2.2): verify a client's signed assertion, single use within its life.

The assertion's `aud` must be the URL of the endpoint it is presented at (BROKER_PUBLIC_URL +
path), not the broker's issuer identifier, which RFC 7523 §3 would also allow: an assertion
made for one endpoint is then refused at every other. Its `jti` is recorded in the database
until it expires, so replicas agree that it was used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from broker import audit
from broker.clock import get_clock
from broker.db import get_db
from broker.jwks import JoseRefused, JwksUnavailable, get_jwks, header_of, verify_signature
from broker.models import ClientAssertion
from broker.tenancy.client_auth import ClientInfo, get_cache, note_use

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME = 300  # the cap: an assertion lives at most five minutes
log = logging.getLogger(__name__)


class AssertionRejected(Exception):
    """An assertion that does not authenticate; `reason` goes to logs and audit, never users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Asserted:
    """The client an assertion authenticated, and what the audit records of it."""

    client: ClientInfo
    credential: dict[str, str]


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionRejected(f"{name}_not_a_number")
    return float(value)


def claims_problem(
    claims: dict[str, Any], audience: str, now: float, leeway: float
) -> str | None:
    """Return why verified assertion claims are refused (a short code), or None."""
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in [a for a in audiences if isinstance(a, str)]:
        return "wrong_audience"
    try:
        exp, iat, nbf = (_number(claims, n) for n in ("exp", "iat", "nbf"))
    except AssertionRejected as rejected:
        return rejected.reason
    if exp is None:
        return "no_exp"
    if exp <= now - leeway:
        return "expired"
    if exp > now + MAX_LIFETIME + leeway or (iat is not None and exp - iat > MAX_LIFETIME):
        return "lifetime_too_long"
    if (iat is not None and iat > now + leeway) or (nbf is not None and nbf > now + leeway):
        return "not_yet_valid"
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        return "no_jti"
    return None


def _keys(app: Flask, info: ClientInfo, kid: Any) -> Any:
    if info.jwt_keys is not None:
        if isinstance(kid, str) and kid:
            found = [key for key in info.jwt_keys.keys if key.kid == kid]
            if not found:
                raise AssertionRejected("unknown_kid")
            return type(info.jwt_keys)(found)
        return info.jwt_keys  # one pinned key: a kid is a convenience, not a need
    if not info.jwks_url:
        raise AssertionRejected("no_keys")
    if not isinstance(kid, str) or not kid:
        raise AssertionRejected("no_kid")
    try:
        keys = get_jwks(app).keys_for(info.jwks_url, kid)
    except JwksUnavailable:
        raise AssertionRejected("jwks_unavailable") from None
    if keys is None:
        raise AssertionRejected("unknown_kid")
    return keys


def verify_assertion(
    app: Flask, assertion: str, audience: str, *, named: str = "", ip: str | None = None
) -> Asserted:
    """Return the client a signed assertion authenticates, or raise AssertionRejected.

    Refusals after the signature verified (wrong audience, expired, replayed) are audited in
    the client's tenant; before it, nothing names a tenant trustworthily.
    """
    try:
        header, unverified = header_of(assertion)
    except JoseRefused:
        raise AssertionRejected("malformed") from None
    client_id = unverified.get("iss")
    if (not isinstance(client_id, str) or not 0 < len(client_id) <= 64
            or unverified.get("sub") != client_id or (named and named != client_id)):
        raise AssertionRejected("iss_sub_mismatch")
    info = get_cache(app).get(app, client_id)
    if info is None or info.status != "active":
        raise AssertionRejected("unknown_client")
    if info.auth_method != "private_key_jwt":  # one method per client: no downgrade
        raise AssertionRejected("wrong_method")
    try:
        claims = verify_signature(assertion, _keys(app, info, header.get("kid")))
    except JoseRefused:
        raise AssertionRejected("bad_signature") from None
    now = get_clock(app)()
    settings = app.config["BROKER"]
    problem = claims_problem(claims, audience, now.timestamp(), settings.WORKLOAD_LEEWAY)
    if problem is None:
        problem = _use(app, info, str(claims["jti"]), float(claims["exp"]), settings)
    if problem is not None:
        _audit_refusal(app, info, problem, header.get("kid"), ip)
        raise AssertionRejected(problem)
    note_use(app, info.id, now)
    return Asserted(info, {"auth_method": "private_key_jwt",
                           "kid": str(header.get("kid", ""))[:80]})


def _use(app: Flask, info: ClientInfo, jti: str, exp: float, settings: Any) -> str | None:
    """Record a jti until its assertion expires; return "replayed" if it was already used."""
    digest = hashlib.sha256(jti.encode()).hexdigest()
    until = dt.datetime.fromtimestamp(exp + settings.WORKLOAD_LEEWAY, dt.UTC)
    try:
        with get_db(app).transaction() as session:
            session.add(ClientAssertion(client_id=info.id, jti_sha256=digest, expires_at=until))
    except IntegrityError:
        return "replayed"
    return None


def _audit_refusal(app: Flask, info: ClientInfo, reason: str, kid: Any, ip: str | None) -> None:
    with get_db(app).transaction() as session:
        audit.record(
            session, action="client.authenticate", tenant_id=info.tenant_id,
            actor_type="client", actor_id=info.id, ip=ip, outcome="denied", reason=reason,
            details={"auth_method": "private_key_jwt", "kid": str(kid or "")[:80]},
        )


def purge_assertions(app: Flask) -> int:
    """Forget used assertion ids whose assertions have expired (the worker's duty)."""
    now = get_clock(app)()
    with get_db(app).transaction() as session:
        result = session.execute(
            delete(ClientAssertion).where(ClientAssertion.expires_at < now)
            .execution_options(synchronize_session=False)
        )
    return int(getattr(result, "rowcount", 0) or 0)
