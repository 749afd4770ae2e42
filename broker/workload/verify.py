"""Validate a workload JWT against the trust rules of its issuer, and pick exactly one rule.

Order: the header (an allowed algorithm, a `kid`), the rules of the unverified `iss`, the keys
(pinned, or the discovery document's, whose `issuer` must equal `iss`), the signature, then
each rule's claims. The claim checks (`check_claims`) are pure: plain values and `now` in.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from joserfc.jwk import KeySet
from sqlalchemy import select

from broker.config import is_loopback_url
from broker.db import get_db
from broker.jwks import (
    JoseRefused,
    JwksUnavailable,
    get_jwks,
    header_of,
    key_set_of,
    verify_signature,
)
from broker.models import WorkloadTrust

TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
SERVICE_ACCOUNT = "system:serviceaccount:"
_MISSING = object()


class SubjectRejected(Exception):
    """A subject token that no rule accepts; `reason` is for logs and audit, never the caller."""

    def __init__(
        self, reason: str, rules: tuple[Rule, ...] = (), subject: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rules = rules
        self.subject = subject  # only once the signature verified


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys cannot be had now (retry later)."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        super().__init__("issuer unavailable")
        self.rules = rules


@dataclass(frozen=True)
class Rule:
    """A trust rule as validation needs it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    client_id: str
    issuer: str
    audiences: tuple[str, ...]
    subject: str | None
    claims: dict[str, str] = field(default_factory=dict)
    users: tuple[str, ...] = ()
    max_lifetime: int = 3600
    jwks: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: WorkloadTrust) -> Rule:
        """Return a row's plain values."""
        return cls(row.id, row.tenant_id, row.client_id, row.issuer, tuple(row.audiences),
                   row.subject, {str(k): str(v) for k, v in (row.claims or {}).items()},
                   tuple(row.users), row.max_lifetime, row.jwks)

    def admits_user(self, user_id: uuid.UUID | None) -> bool:
        """Say whether the rule lets its job act for this user."""
        return "*" in self.users or (user_id is not None and str(user_id) in self.users)


@dataclass(frozen=True)
class Match:
    """The one rule a verified token satisfies, and the token's claims."""

    rule: Rule
    claims: dict[str, Any]

    @property
    def subject(self) -> str:
        """Return the token's `sub`."""
        return str(self.claims.get("sub", ""))


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """Return the value at a dotted path; a key may itself hold dots (`kubernetes.io`)."""
    parts = path.split(".")

    def walk(node: Any, rest: list[str]) -> Any:
        if not rest:
            return node
        if not isinstance(node, dict):
            return _MISSING
        # The longest key first: `kubernetes.io.namespace` is claims["kubernetes.io"]["namespace"].
        for cut in range(len(rest), 0, -1):
            key = ".".join(rest[:cut])
            if key in node:
                found = walk(node[key], rest[cut:])
                if found is not _MISSING:
                    return found
        return _MISSING

    return walk(claims, parts)


def scalar_text(value: Any) -> str | None:
    """Return a claim's value as the text a condition names, or None for objects and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_claims(rule: Rule, claims: dict[str, Any], now: float, leeway: float) -> str | None:
    """Return why a verified token's claims do not satisfy a rule (a short code), or None."""
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a in rule.audiences for a in audiences):
        return "wrong_audience"
    exp, iat, nbf = (_number(claims.get(n)) for n in ("exp", "iat", "nbf"))
    if exp is None:
        return "no_exp"  # legacy Kubernetes tokens never expire: refused whatever the rule
    if exp <= now - leeway:
        return "expired"
    if iat is None:
        return "no_iat"
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        return "issued_in_future"
    if exp - iat > rule.max_lifetime:
        return "lifetime_too_long"
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return "no_subject"
    if rule.subject is not None and not hmac.compare_digest(sub.encode(), rule.subject.encode()):
        return "wrong_subject"
    if sub.startswith(SERVICE_ACCOUNT) and sub.endswith(":default") and rule.subject != sub:
        # Every pod without its own account runs as `default`: only a rule naming it admits it.
        return "default_service_account"
    for name, wanted in sorted(rule.claims.items()):
        if scalar_text(claim_at(claims, name)) != wanted:
            return f"claim_mismatch:{name}"[:60]
    return None


def _https_or_loopback(url: str, issuer: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and is_loopback_url(url)
                                 and is_loopback_url(issuer))


def _discovered_keys(app: Flask, issuer: str, kid: str) -> KeySet | str:
    """Return the discovered keys with this kid, or the reason there are none."""
    jwks = get_jwks(app)
    document = jwks.document(issuer.rstrip("/") + "/.well-known/openid-configuration")
    named = document.get("issuer")
    if not isinstance(named, str) or not hmac.compare_digest(named.encode(), issuer.encode()):
        return "discovery_issuer_mismatch"
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not _https_or_loopback(jwks_uri, issuer):
        return "discovery_jwks_uri_refused"
    return jwks.keys_for(jwks_uri, kid) or "unknown_kid"


def _pinned_keys(rule: Rule, kid: str) -> KeySet | str:
    try:
        keys = key_set_of(rule.jwks)
    except ValueError:
        return "pinned_jwks_unreadable"
    found = [key for key in keys.keys if key.kid == kid]
    return KeySet(found) if found else "unknown_kid"


def load_rules(app: Flask, issuer: str, now: dt.datetime) -> tuple[Rule, ...]:
    """Return the active, unexpired rules of an issuer (exact string)."""
    with get_db(app).transaction(write=False) as session:
        rows = session.scalars(
            select(WorkloadTrust).where(WorkloadTrust.issuer == issuer,
                                        WorkloadTrust.status == "active")
            .order_by(WorkloadTrust.created_at, WorkloadTrust.id)
        ).all()
        return tuple(Rule.of(r) for r in rows if r.expires_at is None or r.expires_at > now)


def identify(app: Flask, token: str, now: dt.datetime) -> Match:
    """Return the one rule a subject token satisfies; raise SubjectRejected or IssuerUnavailable."""
    try:
        header, unverified = header_of(token)
    except JoseRefused as refused:
        # Audited under the issuer's rules when the payload still names one.
        reason = "algorithm_not_allowed" if "algorithm" in str(refused) else "malformed"
        raise SubjectRejected(reason, _rules_named(app, token, now)) from None
    iss = unverified.get("iss")
    if not isinstance(iss, str) or not 0 < len(iss) <= 500:
        raise SubjectRejected("no_issuer")
    rules = load_rules(app, iss, now)
    if not rules:
        raise SubjectRejected("unknown_issuer")
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 200:
        raise SubjectRejected("no_kid", rules)
    leeway = app.config["BROKER"].WORKLOAD_LEEWAY
    # Per key source (discovery, or one rule's pinned set): the claims, or why there are none.
    verified: dict[str, dict[str, Any] | str] = {}
    matches: list[Rule] = []
    problems: list[str] = []
    subject: str | None = None
    for rule in rules:
        source = "discovery" if rule.jwks is None else f"pinned:{rule.id}"
        if source not in verified:
            verified[source] = _verify(app, token, rule, iss, kid)
        outcome = verified[source]
        if isinstance(outcome, str):
            problems.append(outcome)
            continue
        subject = str(outcome.get("sub", ""))[:200]
        problem = check_claims(rule, outcome, now.timestamp(), leeway)
        if problem is None:
            matches.append(rule)
        else:
            problems.append(problem)
    if len(matches) == 1:
        claims = verified["discovery" if matches[0].jwks is None else f"pinned:{matches[0].id}"]
        if isinstance(claims, dict):
            return Match(matches[0], claims)
    if matches:
        raise SubjectRejected("ambiguous_rules", tuple(matches), subject)
    raise SubjectRejected(problems[0], rules, subject)


def _verify(app: Flask, token: str, rule: Rule, iss: str, kid: str) -> dict[str, Any] | str:
    try:
        keys = _pinned_keys(rule, kid) if rule.jwks is not None else _discovered_keys(
            app, iss, kid)
    except JwksUnavailable:
        raise IssuerUnavailable((rule,)) from None
    if isinstance(keys, str):
        return keys
    try:
        return verify_signature(token, keys)
    except JoseRefused:
        return "bad_signature"


def _rules_named(app: Flask, token: str, now: dt.datetime) -> tuple[Rule, ...]:
    """Return the rules of the issuer a malformed token's payload names, if it names one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        iss = claims.get("iss") if isinstance(claims, dict) else None
    except (IndexError, ValueError, UnicodeError):
        return ()
    if not isinstance(iss, str) or not 0 < len(iss) <= 500:
        return ()
    return load_rules(app, iss, now)
