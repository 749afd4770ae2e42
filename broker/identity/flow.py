"""The checks both OAuth callbacks share: state, error, issuer, code exchange, id_token."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from broker.config import Settings
from broker.db import Database
from broker.google import Failure, Google, GoogleError, IdTokenError, TokenResponse
from broker.identity.refusals import Refusal
from broker.identity.sessions import TransactionRefused, consume
from broker.keys import KeyService
from broker.models import OAuthTransaction

SILENT_ERRORS = frozenset({"login_required", "consent_required", "interaction_required"})
MAX_CODE_LENGTH = 512  # Google's codes are under 256 bytes
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")

log = logging.getLogger(__name__)


class SilentSignInFailed(Exception):
    """A `prompt=none` round trip came back without a sign-in."""


@dataclass(frozen=True)
class Completed:
    """A callback that passed every check: its transaction, Google's tokens and the claims."""

    transaction: OAuthTransaction
    token: TokenResponse
    claims: dict[str, Any]


def google_refusal(error: GoogleError, **context: Any) -> Refusal:
    """Turn a failed call to Google into the refusal a person sees."""
    reason = {
        Failure.TRANSIENT: "google_unavailable",
        Failure.MISCONFIGURED: "broker_misconfigured",
        Failure.INVALID_GRANT: "code_rejected",
    }.get(error.kind, "google_error")
    details = {"google_error": error.error} if _ERROR_CODE.match(error.error or "") else {}
    return Refusal(reason, details=details, **context)


def anonymous_refusal(reason: str, *, flow: str, problem: str | None = None) -> Refusal:
    """Log a callback refusal that names no tenant and return it unaudited.

    Anyone can send such a callback, so auditing it would let anyone grow the audit table; the
    log line says why without the state or code.
    """
    log.info(
        "%s callback refused: %s%s", flow, reason, f" ({problem})" if problem else "",
        extra={"event": "callback_refused", "outcome": "denied", "reason": reason},
    )
    return Refusal(reason)


def complete(
    db: Database, keys: KeyService, google: Google, args: MultiDict[str, str], *,
    purpose: str, binding: str | None, redirect_uri: str, now: dt.datetime, action: str,
) -> Completed:
    """Consume the transaction, then verify Google's answer before and after the code exchange."""
    if any(len(args.getlist(name)) > 1 for name in ("state", "code", "error", "iss")):
        raise anonymous_refusal("bad_state", flow=purpose, problem="duplicate_parameter")
    try:
        with db.transaction() as session:
            transaction, verifier = consume(
                session, keys, args.get("state"), purpose=purpose, binding=binding, now=now
            )
    except TransactionRefused as refused:
        if refused.tenant_id is None:  # no transaction, or a sign-in nobody is known by yet
            raise anonymous_refusal(refused.reason, flow=purpose) from None
        raise Refusal(
            refused.reason, action=action, tenant_id=refused.tenant_id, user_id=refused.user_id
        ) from None
    context: dict[str, Any] = {
        "action": action, "tenant_id": transaction.tenant_id, "user_id": transaction.user_id,
    }
    error = args.get("error")
    if error:
        if transaction.prompt == "none" and error in SILENT_ERRORS:
            raise SilentSignInFailed(error)
        if error == "access_denied":
            raise Refusal("access_denied", **context)
        code = error if _ERROR_CODE.match(error) else "unrecognised"
        raise Refusal("google_error", details={"google_error": code}, **context)
    try:
        google.check_response_issuer(args.get("iss"))
    except IdTokenError:
        raise Refusal("issuer_mismatch", **context) from None
    except GoogleError as failed:
        raise google_refusal(failed, **context) from None
    code = args.get("code") or ""
    if not code or len(code) > MAX_CODE_LENGTH:
        raise Refusal("code_rejected", **context)
    try:
        token = google.exchange_code(code, code_verifier=verifier, redirect_uri=redirect_uri)
    except GoogleError as failed:
        raise google_refusal(failed, **context) from None
    if not token.id_token:
        raise Refusal("id_token_invalid", details={"problem": "missing"}, **context)
    try:
        claims = google.verify_id_token(token.id_token, nonce=transaction.nonce)
    except IdTokenError as invalid:
        raise Refusal(invalid.reason, details={"problem": str(invalid)[:100]}, **context) from None
    except GoogleError as failed:
        raise google_refusal(failed, **context) from None
    return Completed(transaction, token, claims)


class FlowService:
    """What both browser OAuth flows (sign-in, connect) are built from."""

    callback_path = ""

    def __init__(
        self, db: Database, keys: KeyService, google: Google, settings: Settings,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.db = db
        self.keys = keys
        self.google = google
        self.clock = clock
        self.redirect_uri = settings.PUBLIC_URL.rstrip("/") + self.callback_path
