"""The gate of every Gmail call: counters, request log, faults, auth, scopes, quota, concurrency."""

from __future__ import annotations

import functools
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from flask import Blueprint, Response, g, request

from broker.emulator.context import account_of, bearer_token, get_emulator, json_response
from broker.emulator.faults import apply_fault
from broker.emulator.mailbox import MailError
from broker.emulator.mailstore import MailStore
from broker.emulator.state import AccessToken, Account

F = TypeVar("F", bound=Callable[..., Response])

GMAIL_PATHS = ("/gmail/", "/upload/gmail/")
REALM = 'Bearer realm="https://accounts.google.com/"'
DEVCONSOLE = "See https://developers.google.com/identity/sign-in/web/devconsole-project."
METADATA = "https://www.googleapis.com/auth/gmail.metadata"
# Scopes per method: a trimmed copy of Gmail's discovery document (the emulator imports nothing
# of the broker, which ships its own copy).
METHODS: dict[str, dict[str, Any]] = json.loads(
    Path(__file__).with_name("gmail.v1.json").read_text(encoding="utf-8")
)["methods"]
# Quota units per call, from https://developers.google.com/gmail/api/reference/quota.
COSTS = {
    "gmail.users.getProfile": 1,
    "gmail.users.labels.list": 1,
    "gmail.users.history.list": 2,
    "gmail.users.messages.list": 5,
    "gmail.users.messages.get": 5,
    "gmail.users.messages.modify": 5,
    "gmail.users.messages.attachments.get": 5,
    "gmail.users.threads.list": 10,
    "gmail.users.threads.get": 10,
    "gmail.users.messages.send": 100,
}
# Google's internal method names, as its ErrorInfo details name them.
RPC_NAMES = {
    "gmail.users.getProfile": "GetProfile",
    "gmail.users.labels.list": "ListLabels",
    "gmail.users.history.list": "ListHistory",
    "gmail.users.messages.list": "ListMessages",
    "gmail.users.messages.get": "GetMessage",
    "gmail.users.messages.modify": "ModifyMessage",
    "gmail.users.messages.attachments.get": "GetAttachment",
    "gmail.users.threads.list": "ListThreads",
    "gmail.users.threads.get": "GetThread",
    "gmail.users.messages.send": "SendMessage",
}
STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
            404: "NOT_FOUND", 413: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED"}  # fmt: skip
# Header values the request log may show; every other header appears by name only.
LOGGED_VALUES = frozenset({
    "content-type", "content-length", "content-range", "transfer-encoding", "user-agent",
    "x-goog-api-client", "x-upload-content-type", "x-upload-content-length",
})  # fmt: skip
LOG_SIZE = 100


def gmail_error(
    code: int, message: str, reason: str, *, domain: str = "global", status: bool = True,
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """Build Google's error body `{"error": {"code", "message", "errors": [...], "status"}}`."""
    item = {"message": message, "domain": domain, "reason": reason}
    body: dict[str, Any] = {"code": code, "message": message, "errors": [item]}
    if status and code in STATUSES:
        body["status"] = STATUSES[code]
    body.update(extra)
    return {"error": body}


def mail_error_response(error: MailError) -> Response:
    """Render a refused mailbox request."""
    return json_response(gmail_error(error.status, error.message, error.reason), error.status)


class GmailDesk:
    """The Gmail side's own state: mailboxes, quota spent, calls in flight, the request log."""

    def __init__(self, now: Callable[[], int]) -> None:
        self.mail = MailStore(now)
        self._lock = threading.Lock()
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._minute = -1
        self._spent: dict[str, int] = {}
        self._project = 0
        self._in_flight: dict[str, int] = {}

    def reset(self) -> None:
        """Forget mailboxes, quota, the log (calls in flight finish on their own)."""
        self.mail.reset()
        with self._lock:
            self._log.clear()
            self._spent.clear()
            self._project, self._minute = 0, -1

    def charge(self, sub: str, units: int, minute: int, user_limit: int, project_limit: int) -> str:
        """Spend units of this minute's quota; return "" or the reason it is refused."""
        with self._lock:
            if minute != self._minute:
                self._minute, self._spent, self._project = minute, {}, 0
            if self._spent.get(sub, 0) + units > user_limit:
                return "userRateLimitExceeded"
            if self._project + units > project_limit:
                return "rateLimitExceeded"
            self._spent[sub] = self._spent.get(sub, 0) + units
            self._project += units
            return ""

    def enter(self, sub: str, cap: int | None) -> bool:
        """Take one of the user's concurrent-call slots; False when all are taken."""
        with self._lock:
            if cap is not None and self._in_flight.get(sub, 0) >= cap:
                return False
            self._in_flight[sub] = self._in_flight.get(sub, 0) + 1
            return True

    def leave(self, sub: str) -> None:
        """Give a slot back."""
        with self._lock:
            self._in_flight[sub] -= 1
            if not self._in_flight[sub]:
                del self._in_flight[sub]

    def log(self, entry: dict[str, Any]) -> None:
        """Keep an entry among the last requests (the caller may fill it in later)."""
        with self._lock:
            self._log.append(entry)

    def requests(self) -> list[dict[str, Any]]:
        """Return a copy of the last requests, oldest first."""
        with self._lock:
            return json.loads(json.dumps(list(self._log)))  # type: ignore[no-any-return]


class CountingInput:
    """Wrap `wsgi.input` to count the body bytes the emulator actually read."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Read and count."""
        data: bytes = self._stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        """Read a line and count it."""
        data: bytes = self._stream.readline(size)
        self.count += len(data)
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def _redacted_query(query: str) -> str:
    # Google takes a token in `access_token=`; the log must never show one.
    pieces = query.split("&") if query else []
    return "&".join(
        p.split("=", 1)[0] + "=REDACTED" if p.split("=", 1)[0] == "access_token" else p
        for p in pieces
    )


def arrive() -> None:
    """Count and log every request to a Gmail path, answered or not."""
    if not request.path.startswith(GMAIL_PATHS):
        return
    emulator = get_emulator()
    emulator.faults.count("gmail")
    environ = request.environ
    counter = CountingInput(environ["wsgi.input"])
    environ["wsgi.input"] = counter
    raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path)
    names = sorted({name.lower() for name in request.headers.keys()})
    token = bearer_token()
    account = account_of(token) if token else None
    scheme = request.headers.get("Authorization", "").partition(" ")[0]
    entry: dict[str, Any] = {
        "method": request.method,
        "path": raw.split("?", 1)[0],
        "query": _redacted_query(environ.get("QUERY_STRING", "")),
        "headers": {n: request.headers.get(n) if n in LOGGED_VALUES else None for n in names},
        "auth_scheme": scheme or None,
        "account": account.email if account else None,
        "token_scopes": sorted(token.scopes) if token and account else None,
        "method_id": None,
        "body_length": 0,
        "status": None,
    }
    g.gmail_entry, g.gmail_input = entry, counter
    emulator.gmail.log(entry)


def depart(response: Response) -> Response:
    """Complete the request's log entry with its status and the body bytes read."""
    entry = g.pop("gmail_entry", None)
    if entry is not None:
        entry["status"] = response.status_code
        entry["body_length"] = g.pop("gmail_input").count
    return response


def register_hooks(bp: Blueprint) -> None:
    """Count and log every Gmail-path request of the app, 404s included."""
    bp.before_app_request(arrive)
    bp.after_app_request(depart)


@dataclass
class Call:
    """An authenticated Gmail call: whose mailbox and what the token allows."""

    method_id: str
    account: Account
    token: AccessToken
    metadata_only: bool

    @property
    def mail(self) -> MailStore:
        """Return the mailboxes."""
        return get_emulator().gmail.mail


def _unauthenticated(missing: bool) -> Response:
    if missing:
        message = (
            "Request is missing required authentication credential. Expected OAuth 2 access "
            f"token, login cookie or other valid authentication credential. {DEVCONSOLE}"
        )
        item_message, reason, challenge = "Login Required.", "required", REALM
    else:
        message = (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            f"login cookie or other valid authentication credential. {DEVCONSOLE}"
        )
        item_message, reason = "Invalid Credentials", "authError"
        challenge = f'{REALM}, error="invalid_token"'
    body = gmail_error(401, message, reason)
    body["error"]["errors"][0].update(
        message=item_message, location="Authorization", locationType="header"
    )
    return json_response(body, 401, {"WWW-Authenticate": challenge})


def _insufficient(method_id: str) -> Response:
    detail = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "domain": "googleapis.com",
        "metadata": {
            "service": "gmail.googleapis.com",
            "method": f"caribou.api.proto.MailboxService.{RPC_NAMES[method_id]}",
        },
    }
    body = gmail_error(
        403, "Request had insufficient authentication scopes.", "insufficientPermissions",
        details=[detail],
    )  # fmt: skip
    body["error"]["errors"][0]["message"] = "Insufficient Permission"
    scopes = " ".join(METHODS[method_id]["scopes"])
    challenge = f'{REALM}, error="insufficient_scope", scope="{scopes}"'
    return json_response(body, 403, {"WWW-Authenticate": challenge})


def _refusal(
    method_id: str, token: AccessToken | None, account: Account | None, user_id: str
) -> Response | None:
    if token is None or account is None:
        missing = not request.headers.get("Authorization") and not request.args.get("access_token")
        return _unauthenticated(missing)
    if not set(METHODS[method_id]["scopes"]) & set(token.scopes):
        return _insufficient(method_id)
    if user_id != "me" and user_id.lower() != account.email.lower():
        message = f"Delegation denied for {account.email}"
        return json_response(gmail_error(403, message, "forbidden"), 403)
    emulator = get_emulator()
    with emulator.state.lock:
        settings = dict(emulator.state.settings)
        minute = emulator.state.now() // 60
    refused = emulator.gmail.charge(
        account.sub, COSTS[method_id], minute,
        int(settings["gmail_user_quota"]), int(settings["gmail_project_quota"]),
    )  # fmt: skip
    if refused == "userRateLimitExceeded":
        body = gmail_error(403, "User Rate Limit Exceeded", refused, domain="usageLimits",
                           status=False)  # fmt: skip
        return json_response(body, 403)
    if refused:
        body = gmail_error(403, "Rate Limit Exceeded", refused, domain="usageLimits", status=False)
        return json_response(body, 403)
    return None


def _too_many() -> Response:
    message = "Too many concurrent requests for user"
    return json_response(gmail_error(429, message, "rateLimitExceeded"), 429)


def gmail_method(method_id: str, *, authenticate: bool = True) -> Callable[[F], F]:
    """Gate a Gmail view: count it, fault it, then check token, scopes, userId and quota.

    The view receives a `Call` (or None when `authenticate` is off) instead of `user_id`.
    A user's concurrent-call slot is held until the answer, streamed or not, is closed.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(user_id: str, **kwargs: Any) -> Response:
            emulator = get_emulator()
            emulator.faults.count_method(method_id)
            if "gmail_entry" in g:
                g.gmail_entry["method_id"] = method_id
            token = bearer_token() if authenticate else None
            account = account_of(token) if token else None
            with emulator.state.lock:
                cap = emulator.state.settings.get("gmail_user_concurrency")
            sub = account.sub if account else None
            if sub is not None and not emulator.gmail.enter(sub, cap):
                return _too_many()
            try:
                response = apply_fault("gmail") or _answer(
                    view, method_id, token, account, user_id, authenticate, kwargs
                )
            except BaseException:
                if sub is not None:
                    emulator.gmail.leave(sub)
                raise
            if sub is not None:
                response.call_on_close(functools.partial(emulator.gmail.leave, sub))
            return response

        return cast(F, wrapper)

    return decorate


def _answer(
    view: Callable[..., Response], method_id: str, token: AccessToken | None,
    account: Account | None, user_id: str, authenticate: bool, kwargs: dict[str, Any],
) -> Response:  # fmt: skip
    call = None
    if authenticate:
        refused = _refusal(method_id, token, account, user_id)
        if refused is not None or token is None or account is None:
            return refused or _unauthenticated(False)
        allowed = set(METHODS[method_id]["scopes"]) & set(token.scopes)
        call = Call(method_id, account, token, allowed == {METADATA})
    try:
        return view(call, **kwargs)
    except MailError as error:
        return mail_error_response(error)
