"""The `/_emulator/` controls that tests and the demo use to steer the fake Google."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, current_app, request

from broker.emulator import risc
from broker.emulator.context import get_emulator, issuer, json_response, only_in_emulator
from broker.emulator.faults import Fault, FaultError
from broker.emulator.mailbox import MAX_MESSAGE_BYTES
from broker.emulator.mime import attachment_id
from broker.emulator.scopes import is_known_scope, normalize_scopes, with_openid
from broker.emulator.state import Account, Client

bp = Blueprint("emulator_controls", __name__, url_prefix="/_emulator")
bp.record_once(only_in_emulator)

SETTINGS = (
    "access_token_lifetime", "refresh_token_limit", "testing_refresh_ttl", "auto_consent",
    "gmail_user_quota", "gmail_project_quota", "gmail_user_concurrency",
)  # fmt: skip
MAX_SEEDED_MESSAGES = 100_000


class ControlError(Exception):
    """A control request that cannot be carried out."""

    def __init__(self, description: str, status_code: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status_code = status_code


@bp.before_request
def loopback_only() -> Response | None:
    """Refuse every control to peers that are not on this machine."""
    try:
        loopback = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        body = {"error": "forbidden", "error_description": "Controls answer loopback peers only."}
        return json_response(body, 403)
    return None


@bp.errorhandler(ControlError)
def control_error(error: ControlError) -> Response:
    """Render a refused control as JSON."""
    return json_response(
        {"error": "bad_control", "error_description": error.description}, error.status_code
    )


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ControlError("the body must be a JSON object")
    return body


def _account(email: str) -> Account:
    account = get_emulator().state.account_by_email(email)
    if account is None:
        raise ControlError(f"no account {email}", 404)
    return account


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _describe(account: Account) -> dict[str, Any]:
    return asdict(account)


@bp.get("/")
def index() -> Response:
    """List the controls, so the address the start banner prints answers something useful."""
    controls = [
        f"{' '.join(sorted((rule.methods or set()) - {'HEAD', 'OPTIONS'}))} {rule.rule}"
        for rule in current_app.url_map.iter_rules()
        if rule.endpoint.startswith(f"{bp.name}.") and rule.endpoint != f"{bp.name}.index"
    ]
    body = {"emulator": "Google emulator for tests and offline demos: NOT Google"}
    return json_response({**body, "controls": sorted(controls, key=lambda c: c.split()[-1])})


@bp.post("/accounts")
def add_account() -> Response:
    """Create (or update) an account."""
    body = _body()
    fields = {k: body[k] for k in ("name", "hd", "email_verified", "sub") if k in body}
    stats = {k: body[k] for k in ("messages_total", "threads_total", "history_id") if k in body}
    try:
        account = get_emulator().state.add_account(str(body.get("email", "")), **fields, **stats)
    except (ValueError, TypeError) as invalid:
        raise ControlError(str(invalid)) from invalid
    if stats:
        # The default mailbox follows the account's figures: build it again from the new ones.
        get_emulator().gmail.mail.forget(account.sub)
    return json_response({"sub": account.sub, "email": account.email})


@bp.get("/accounts")
def list_accounts() -> Response:
    """List the accounts."""
    state = get_emulator().state
    with state.lock:
        accounts = [_describe(a) for a in state.accounts.values()]
    return json_response({"accounts": accounts})


@bp.post("/clients")
def add_client() -> Response:
    """Register or replace an OAuth client."""
    body = _body()
    client_id, secret = body.get("client_id"), body.get("client_secret")
    uris = body.get("redirect_uris", [])
    if not isinstance(client_id, str) or not client_id or not isinstance(secret, str) or not secret:
        raise ControlError("client_id and client_secret are required strings")
    if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
        raise ControlError("redirect_uris must be a list of URIs")
    state = get_emulator().state
    with state.lock:
        state.clients[client_id] = Client(client_id, secret, list(uris))
        state.save()
    return json_response({"client_id": client_id, "redirect_uris": uris})


@bp.get("/clients")
def list_clients() -> Response:
    """List the registered clients, without their secrets."""
    state = get_emulator().state
    with state.lock:
        clients = [
            {"client_id": c.client_id, "redirect_uris": c.redirect_uris}
            for c in state.clients.values()
        ]
    return json_response({"clients": clients})


@bp.post("/grants")
def mint_grant() -> Response:
    """Grant scopes as if the user had consented, and return the token answer."""
    body = _body()
    emulator = get_emulator()
    account = _account(str(body.get("email", "")))
    client_id = str(body.get("client_id", ""))
    with emulator.state.lock:
        if client_id not in emulator.state.clients:
            raise ControlError(f"no client {client_id}", 404)
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ControlError("scopes must be a non-empty list")
    unknown = [s for s in normalize_scopes(scopes) if not is_known_scope(s)]
    if unknown:
        raise ControlError(f"unknown scopes: {' '.join(unknown)}")
    granted = with_openid(scopes)
    emulator.tokens.record_consent(account.sub, client_id, granted)
    answer = emulator.tokens.issue(
        account, client_id, granted, access_type="offline", refresh=True, issuer=issuer()
    )
    return json_response(answer)


@bp.post("/accounts/<email>/revoke")
def user_revokes(email: str) -> Response:
    """Revoke every grant of an account, as the user would on their account page."""
    account = _account(email)
    emulator = get_emulator()
    with emulator.state.lock:
        doomed = [t.token for t in emulator.state.refresh_tokens.values() if t.sub == account.sub]
    emulator.tokens.revoke_account(account.sub)
    # Google tells a registered receiver at once (Cross-Account Protection).
    told = risc.revoked(account.sub, doomed)
    return json_response({"revoked": account.email, "risc": [a["status"] for a in told]})


@bp.post("/risc/stream")
def risc_stream() -> Response:
    """Register a RISC receiver without a service account: `{"url", "audience"?}`."""
    body = _body()
    audience = body.get("audience")
    if audience is not None and not isinstance(audience, (str, list)):
        raise ControlError("audience must be a string or a list of strings")
    try:
        return json_response(risc.set_stream(str(body.get("url", "")), audience))
    except risc.RiscError as invalid:
        raise ControlError(invalid.message, invalid.status) from invalid


@bp.post("/risc/send")
def risc_send() -> Response:
    """Sign and deliver one security event now; answer with the receiver's status and body."""
    try:
        return json_response(risc.send_event(_body()))
    except risc.RiscError as invalid:
        raise ControlError(invalid.message, invalid.status) from invalid


@bp.post("/accounts/<email>/password")
def password_change(email: str) -> Response:
    """Change the password: the account's Gmail-scoped refresh tokens die."""
    killed = get_emulator().tokens.password_changed(_account(email).sub)
    return json_response({"refresh_tokens_revoked": killed})


@bp.post("/accounts/<email>/reauth")
def require_reauth(email: str) -> Response:
    """Make refreshes fail with `invalid_rapt` until the user signs in again."""
    account = _account(email)
    state = get_emulator().state
    with state.lock:
        account.reauth_required = bool(_body().get("required", True))
        state.save()
    return json_response({"email": account.email, "reauth_required": account.reauth_required})


@bp.post("/expire")
def expire() -> Response:
    """Expire current access tokens, all or one account's."""
    email = _body().get("email")
    sub = _account(str(email)).sub if email else None
    return json_response({"expired": get_emulator().tokens.expire_access_tokens(sub)})


@bp.route("/settings", methods=["GET", "POST"])
def settings() -> Response:
    """Change how the emulator behaves; answer the settings now in force."""
    state = get_emulator().state
    if request.method == "POST":
        changes = _body()
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise ControlError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name in (
            "access_token_lifetime", "refresh_token_limit", "gmail_user_quota",
            "gmail_project_quota",
        ):  # fmt: skip
            if not _positive(changes.get(name, 1)):
                raise ControlError(f"{name} must be a positive whole number")
        for name in ("testing_refresh_ttl", "gmail_user_concurrency"):
            value = changes.get(name)
            if value is not None and not _positive(value):
                raise ControlError(f"{name} must be a positive whole number or null")
        auto = changes.get("auto_consent")
        if auto is not None and not isinstance(auto, (bool, str)):
            raise ControlError("auto_consent must be an email, true or null")
        with state.lock:
            state.settings.update(changes)
            if state.settings["auto_consent"] is False:
                state.settings["auto_consent"] = None
            state.save()
    with state.lock:
        return json_response(dict(state.settings))


@bp.route("/faults", methods=["GET", "POST", "DELETE"])
def faults() -> Response:
    """Queue a fault, list the queued ones, or clear them all."""
    board = get_emulator().faults
    if request.method == "POST":
        try:
            board.add(Fault.from_json(_body()))
        except FaultError as invalid:
            raise ControlError(str(invalid)) from invalid
    elif request.method == "DELETE":
        board.clear()
    return json_response({"faults": board.pending()})


@bp.post("/keys/rotate")
def rotate_keys() -> Response:
    """Make a new signing key current."""
    keys = get_emulator().keys
    kid = keys.rotate()
    return json_response({"kid": kid, "published": [k["kid"] for k in keys.jwks()["keys"]]})


@bp.post("/clock")
def clock() -> Response:
    """Set the clock's offset from real time in seconds, and stop it at a time or let it run."""
    body = _body()
    if not {"offset_seconds", "frozen_at"} & set(body):
        raise ControlError("give offset_seconds, frozen_at or both")
    offset = body.get("offset_seconds", 0)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ControlError("offset_seconds must be a whole number")
    frozen_at = body.get("frozen_at")
    if frozen_at is not None and (
        isinstance(frozen_at, bool) or not isinstance(frozen_at, int) or frozen_at < 0
    ):
        raise ControlError("frozen_at must be a time in whole seconds since the epoch, or null")
    state = get_emulator().state
    with state.lock:
        if "offset_seconds" in body:
            state.clock_offset = offset
        if "frozen_at" in body:
            state.frozen_at = frozen_at
        answer = {
            "offset_seconds": state.clock_offset,
            "frozen_at": state.frozen_at,
            "now": state.now(),
        }
        return json_response(answer)


@bp.post("/accounts/<email>/mailbox")
def seed_mailbox(email: str) -> Response:
    """Replace an account's mailbox with generated messages; answer its ids and figures."""
    account = _account(email)
    body = _body()
    messages = body.get("messages")
    if isinstance(messages, bool) or not isinstance(messages, int):
        raise ControlError("messages must be a whole number")
    if not 0 <= messages <= MAX_SEEDED_MESSAGES:
        raise ControlError(f"messages must be between 0 and {MAX_SEEDED_MESSAGES}")
    options = {"threads": messages, "attachment_bytes": 0, "seed": 0, "history_id": 1000}
    for name, default in options.items():
        value = body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ControlError(f"{name} must be a non-negative whole number")
        options[name] = value
    if options["attachment_bytes"] > MAX_MESSAGE_BYTES:
        raise ControlError(f"attachment_bytes must be at most {MAX_MESSAGE_BYTES}")
    store = get_emulator().gmail.mail
    with store.lock:
        box = store.seed(account, messages=messages, **options)
        listed = []
        for message in box.messages.values():
            entry = message.brief()
            if message.generated is not None:
                entry["attachmentId"] = attachment_id(message.id, message.generated.part_id)
            listed.append(entry)
        return json_response({**box.profile(), "messages": listed})


@bp.get("/gmail/requests")
def gmail_requests() -> Response:
    """Return the last Gmail requests: method, raw path, query, header names, status."""
    return json_response({"requests": get_emulator().gmail.requests()})


@bp.get("/calls")
def calls() -> Response:
    """Count every call received, faulted ones included."""
    return json_response(get_emulator().faults.calls())


@bp.post("/reset")
def reset() -> Response:
    """Forget everything but the registered clients and the signing keys."""
    emulator = get_emulator()
    emulator.faults.reset()
    emulator.state.reset()
    emulator.gmail.reset()
    return json_response({"reset": True})
