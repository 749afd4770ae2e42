"""Tenant policy edits: parse and validate every field, guard the admin's own access, audit."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from broker import audit
from broker.clientip import IPAddress, ip_in, parse_cidrs
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.models import AccessToken, Connection, Policy
from broker.scopes import GMAIL_SCOPES, InvalidScope, full_name, gmail_only

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"^(\d{1,7})\s*([smhd])$")
# (min, max) seconds; a session shorter than five minutes is unusable, longer than 30 days unwise.
BOUNDS = {
    "session_max_age": (300, 30 * 86400),
    "session_idle_timeout": (60, 30 * 86400),
    "handout_login_max_age": (60, 365 * 86400),
}
MAX_RETENTION_DAYS = 3650
MAX_RANGES = 100
FLAGS = ("lock_session_to_ip", "keep_connected", "allow_broader_tokens",
         "end_sessions_on_credential_change")
FIELDS = (
    "session_max_age", "session_idle_timeout", "lock_session_to_ip", "login_ip_ranges",
    "token_ip_ranges", "handout_login_max_age", "keep_connected", "retention_days",
    "offered_scopes", "allow_broader_tokens", "end_sessions_on_credential_change",
)


class PolicyInvalid(InvalidRequest):
    """A policy form with one or more bad fields; `errors` maps each to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class LockoutRisk(Conflict):
    """The new login ranges exclude the admin's own address; needs explicit confirmation."""

    default_description = (
        "These sign-in ranges do not include your current address: you would be signed out "
        "and could not sign in again from here."
    )


@dataclass
class PolicyValues:
    """Validated policy values, as stored."""

    values: dict[str, Any] = field(default_factory=dict)


def parse_duration(text: str) -> int:
    """Read `90s`, `30m`, `8h` or `7d` (the unit is required); return seconds."""
    text = text.strip().lower()
    match = DURATION.match(text)
    if not match:
        raise ValueError("a duration like 30m, 8h or 7d")
    return int(match.group(1)) * UNITS[match.group(2)]


def format_duration(seconds: int | None) -> str:
    """Show seconds in the largest unit that divides them exactly ('' for none)."""
    if seconds is None:
        return ""
    for unit in ("d", "h", "m"):
        if seconds and seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"


def split_ranges(text: str) -> list[str]:
    """Split a textarea of CIDRs on commas, spaces and newlines."""
    return [item for item in re.split(r"[\s,]+", text) if item]


def _duration_field(
    form: Mapping[str, Any], name: str, errors: dict[str, str], *, optional: bool = False
) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        if optional:
            return None
        errors[name] = "required"
        return None
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        errors[name] = str(exc)
        return None
    low, high = BOUNDS[name]
    if not low <= seconds <= high:
        errors[name] = f"between {format_duration(low)} and {format_duration(high)}"
        return None
    return seconds


def _ranges_field(form: Mapping[str, Any], name: str, errors: dict[str, str]) -> list[str]:
    try:
        ranges = parse_cidrs(split_ranges(str(form.get(name) or "")))
    except ValueError as exc:
        errors[name] = str(exc)
        return []
    if len(ranges) > MAX_RANGES:
        errors[name] = f"at most {MAX_RANGES} ranges"
    return list(dict.fromkeys(ranges))


def _scopes_field(scopes: Sequence[str], errors: dict[str, str]) -> list[str]:
    chosen = set()
    for item in scopes:
        try:
            name = full_name(item)
        except InvalidScope:
            errors["offered_scopes"] = f"unknown scope {item[:80]!r}"
            return []
        if name not in GMAIL_SCOPES:
            errors["offered_scopes"] = f"not a Gmail scope: {item[:80]!r}"
            return []
        chosen.add(name)
    return [s for s in GMAIL_SCOPES if s in chosen]


def _retention_field(form: Mapping[str, Any], errors: dict[str, str]) -> int | None:
    raw = str(form.get("retention_days") or "").strip().lower().removesuffix("d").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RETENTION_DAYS:
        errors["retention_days"] = f"a number of days from 1 to {MAX_RETENTION_DAYS}, or empty"
        return None
    return int(raw)


def parse_form(form: Mapping[str, Any], offered: Sequence[str]) -> PolicyValues:
    """Validate a submitted policy form; raise PolicyInvalid listing every bad field."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {
        "session_max_age": _duration_field(form, "session_max_age", errors),
        "session_idle_timeout": _duration_field(form, "session_idle_timeout", errors),
        "handout_login_max_age": _duration_field(
            form, "handout_login_max_age", errors, optional=True
        ),
        "login_ip_ranges": _ranges_field(form, "login_ip_ranges", errors),
        "token_ip_ranges": _ranges_field(form, "token_ip_ranges", errors),
        "retention_days": _retention_field(form, errors),
        "offered_scopes": _scopes_field(offered, errors),
    }
    for flag in FLAGS:
        values[flag] = str(form.get(flag) or "") in ("on", "1", "true", "yes")
    max_age, idle = values["session_max_age"], values["session_idle_timeout"]
    if max_age and idle and idle > max_age:
        errors["session_idle_timeout"] = "must not exceed the session's maximum age"
    if errors:
        raise PolicyInvalid(errors)
    return PolicyValues(values)


def form_values(policy: Policy) -> dict[str, Any]:
    """Return a policy as the form shows it."""
    return {
        "session_max_age": format_duration(policy.session_max_age),
        "session_idle_timeout": format_duration(policy.session_idle_timeout),
        "handout_login_max_age": format_duration(policy.handout_login_max_age),
        "login_ip_ranges": "\n".join(policy.login_ip_ranges),
        "token_ip_ranges": "\n".join(policy.token_ip_ranges),
        "retention_days": "" if policy.retention_days is None else str(policy.retention_days),
        "offered_scopes": list(policy.offered_scopes),
        **{flag: bool(getattr(policy, flag)) for flag in FLAGS},
    }


def get_policy(session: Session, tenant_id: uuid.UUID) -> Policy:
    """Return a tenant's policy, or raise NotFound."""
    policy = session.get(Policy, tenant_id)
    if policy is None:
        raise NotFound("this organization has no policy")
    return policy


def update_policy(
    session: Session, tenant_id: uuid.UUID, new: PolicyValues, *, admin_ip: IPAddress,
    confirmed: bool, actor: str, ip: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply validated values, audit before/after of what changed; return the changes.

    A change of `login_ip_ranges` that leaves out `admin_ip` is refused with LockoutRisk
    unless `confirmed`: the admin's own session would end at their next request.
    """
    policy = get_policy(session, tenant_id)
    changes = {
        name: {"before": getattr(policy, name), "after": value}
        for name, value in new.values.items()
        if getattr(policy, name) != value
    }
    if not changes:
        return {}
    login = changes.get("login_ip_ranges")
    if login and not confirmed and not ip_in(admin_ip, login["after"]):
        raise LockoutRisk()
    for name, change in changes.items():
        setattr(policy, name, change["after"])
    if "allow_broader_tokens" in changes and not policy.allow_broader_tokens:
        _drop_broader_tokens(session, tenant_id)
    audit.record(
        session, action="policy.update", tenant_id=tenant_id, actor_type="admin",
        actor_id=actor, ip=ip,
        details={
            "before": {k: v["before"] for k, v in changes.items()},
            "after": {k: v["after"] for k, v in changes.items()},
            "lockout_confirmed": bool(login and not ip_in(admin_ip, login["after"])),
        },
    )
    return changes


def _drop_broader_tokens(session: Session, tenant_id: uuid.UUID) -> None:
    """Delete stored tokens carrying Gmail scopes beyond their scope key (issue 11 item 3).

    In the policy change's transaction: once it commits, no such token is left to hand out.
    """
    rows = session.execute(
        select(AccessToken.connection_id, AccessToken.scope_key, AccessToken.scopes)
        .join(Connection, Connection.id == AccessToken.connection_id)
        .where(Connection.tenant_id == tenant_id)
    ).all()
    broader = [
        (row.connection_id, row.scope_key) for row in rows
        if set(gmail_only(row.scopes)) - set(row.scope_key.split(" "))
    ]
    if broader:
        session.execute(
            delete(AccessToken)
            .where(tuple_(AccessToken.connection_id, AccessToken.scope_key).in_(broader))
            .execution_options(synchronize_session=False)
        )
