"""Google's authorization endpoint: account chooser, consent screen, the redirect back, and
signing out of the emulator."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from authlib.common.urls import add_params_to_uri
from flask import Blueprint, redirect, render_template, request, session, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from broker.emulator.context import get_emulator, issuer, only_in_emulator
from broker.emulator.scopes import (
    IDENTITY_SCOPES,
    is_known_scope,
    parse_scope,
    scope_string,
    with_openid,
)
from broker.emulator.state import Account

bp = Blueprint("emulator_authorize", __name__)
bp.record_once(only_in_emulator)

PROMPTS = frozenset({"none", "consent", "select_account"})


class PageError(Exception):
    """A refusal Google shows on its own error page instead of redirecting."""

    def __init__(self, error: str, description: str, status_code: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code


@dataclass(frozen=True)
class AuthRequest:
    """A validated authorization request."""

    client_id: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    access_type: str
    prompt: frozenset[str]
    include_granted_scopes: bool
    login_hint: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None


def parse_request(args: MultiDict[str, str]) -> AuthRequest:
    """Validate the query string in the order Google reports problems."""
    emulator = get_emulator()

    def required(name: str) -> str:
        value = args.get(name)
        if not value:
            raise PageError("invalid_request", f"Missing required parameter: {name}")
        return value

    client_id = required("client_id")
    with emulator.state.lock:
        client = emulator.state.clients.get(client_id)
    if client is None:
        raise PageError("invalid_client", "The OAuth client was not found.", 401)
    redirect_uri = required("redirect_uri")
    if redirect_uri not in client.redirect_uris:
        raise PageError(
            "redirect_uri_mismatch",
            "The redirect URI in the request does not match the ones authorized for the "
            f"OAuth client: {redirect_uri}",
        )
    response_type = required("response_type")
    if response_type != "code":
        raise PageError("unsupported_response_type", f"Invalid response_type: {response_type}")
    scopes = parse_scope(required("scope"))
    unknown = [s for s in scopes if not is_known_scope(s)]
    if unknown:
        raise PageError("invalid_scope", f"Some requested scopes were invalid: {unknown}")
    prompt = frozenset((args.get("prompt") or "").split())
    if not prompt <= PROMPTS or ("none" in prompt and len(prompt) > 1):
        raise PageError("invalid_request", f"Invalid prompt: {args.get('prompt')}")
    access_type = args.get("access_type") or "online"
    if access_type not in ("online", "offline"):
        raise PageError("invalid_request", f"Invalid access_type: {access_type}")
    challenge = args.get("code_challenge") or None
    method = args.get("code_challenge_method") or None
    if method is not None and method not in ("S256", "plain"):
        raise PageError("invalid_request", "Invalid code_challenge_method value.")
    if method is not None and challenge is None:
        raise PageError("invalid_request", "Missing required parameter: code_challenge")
    return AuthRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=args.get("state"),
        access_type=access_type,
        prompt=prompt,
        include_granted_scopes=args.get("include_granted_scopes") == "true",
        login_hint=args.get("login_hint") or None,
        nonce=args.get("nonce") or None,
        code_challenge=challenge,
        code_challenge_method=(method or "plain") if challenge else None,
    )


@bp.route("/o/oauth2/v2/auth", methods=["GET", "POST"])
def authorize() -> Any:
    """Walk the user from the chooser through consent to the client's redirect URI."""
    if request.method == "GET":
        get_emulator().faults.count("authorize")
    try:
        auth = parse_request(request.args)
    except PageError as refusal:
        return _error_page(refusal)
    if request.method == "GET":
        return _start(auth)
    sent = request.form.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), str(session.get("csrf", "")).encode()):
        return _error_page(PageError("invalid_request", "The form expired: start again."))
    if request.form.get("step") == "choose":
        email = next((e.strip() for e in request.form.getlist("email") if e.strip()), "")
        if "@" not in email:
            return _chooser(auth, "Enter an email address.")
        chosen = _get_or_create(email)
        _sign_in(chosen)
        return _consent_or_code(auth, chosen)
    account = _active_account()
    if account is None:
        return _chooser(auth)
    if request.form.get("action") != "allow":
        return _redirect_error(auth, "access_denied")
    asked = [s for s in auth.scopes if s not in IDENTITY_SCOPES]
    ticked = [s for s in parse_scope(" ".join(request.form.getlist("scope"))) if s in asked]
    granted = [s for s in auth.scopes if s in IDENTITY_SCOPES] + ticked
    if not granted:
        return _redirect_error(auth, "access_denied")
    return _grant(auth, account, granted)


@bp.route("/Logout", methods=["GET", "POST"])
def logout() -> Response:
    """Sign every account out of this browser, as accounts.google.com/Logout does."""
    session.clear()
    back = request.values.get("continue", "")
    # Only a path on the emulator itself: a sign-out link must not be an open redirect.
    if back.startswith("/") and not back.startswith(("//", "/\\")):
        return redirect(back, code=303)
    page = render_template("emulator/signed_out.html")
    return Response(page, status=200, mimetype="text/html")


def _start(auth: AuthRequest) -> Response:
    emulator = get_emulator()
    account = _auto_account(auth, emulator.state.settings.get("auto_consent"))
    if account is not None and "none" not in auth.prompt:
        _sign_in(account)
        return _grant(auth, account, auth.scopes)
    signed_in = _signed_in_accounts()
    if account is None:
        account = _session_choice(auth, signed_in)
    if "none" in auth.prompt:
        if account is None:
            ambiguous = len(signed_in) > 1 and not auth.login_hint
            return _redirect_error(auth, "interaction_required" if ambiguous else "login_required")
        if _needs_consent(auth, account):
            return _redirect_error(auth, "consent_required")
        return _code_without_consent(auth, account)
    if account is None or "select_account" in auth.prompt:
        return _chooser(auth)
    return _consent_or_code(auth, account)


def _consent_or_code(auth: AuthRequest, account: Account) -> Response:
    if get_emulator().state.settings.get("auto_consent"):
        # An automatic pass stands for a consent screen the user saw and accepted.
        return _grant(auth, account, auth.scopes)
    if _needs_consent(auth, account):
        return _consent_page(auth, account)
    return _code_without_consent(auth, account)


def _needs_consent(auth: AuthRequest, account: Account) -> bool:
    granted = get_emulator().tokens.granted(account.sub, auth.client_id)
    return "consent" in auth.prompt or granted is None or not set(auth.scopes) <= set(granted)


def _code_without_consent(auth: AuthRequest, account: Account) -> Response:
    scopes = with_openid(auth.scopes)
    if auth.include_granted_scopes:
        before = get_emulator().tokens.granted(account.sub, auth.client_id) or []
        scopes = with_openid([*before, *scopes])
    return _issue_code(auth, account, scopes, consent_shown=False)


def _grant(auth: AuthRequest, account: Account, granted: list[str]) -> Response:
    granted = with_openid(granted)
    before = get_emulator().tokens.record_consent(account.sub, auth.client_id, granted)
    scopes = with_openid([*before, *granted]) if auth.include_granted_scopes else granted
    return _issue_code(auth, account, scopes, consent_shown=True)


def _issue_code(
    auth: AuthRequest, account: Account, scopes: list[str], *, consent_shown: bool
) -> Response:
    code = get_emulator().tokens.create_code(
        client_id=auth.client_id,
        redirect_uri=auth.redirect_uri,
        sub=account.sub,
        scopes=scopes,
        access_type=auth.access_type,
        with_refresh_token=auth.access_type == "offline" and consent_shown,
        code_challenge=auth.code_challenge,
        code_challenge_method=auth.code_challenge_method,
        nonce=auth.nonce,
    )
    params: list[tuple[str, str]] = []
    if auth.state is not None:
        params.append(("state", auth.state))
    params += [("iss", issuer()), ("code", code), ("scope", scope_string(scopes))]
    params.append(("authuser", "0"))
    if account.hd:
        params.append(("hd", account.hd))
    params.append(("prompt", "consent" if consent_shown else "none"))
    return redirect(add_params_to_uri(auth.redirect_uri, params), code=302)


def _redirect_error(auth: AuthRequest, error: str) -> Response:
    params = [("error", error)]
    if auth.state is not None:
        params.append(("state", auth.state))
    return redirect(add_params_to_uri(auth.redirect_uri, params), code=302)


def _auto_account(auth: AuthRequest, auto: object) -> Account | None:
    if isinstance(auto, str) and auto:
        return _get_or_create(auto)
    if auto is True and auth.login_hint:
        return _find(auth.login_hint) or (
            _get_or_create(auth.login_hint) if "@" in auth.login_hint else None
        )
    return None


def _find(hint: str) -> Account | None:
    state = get_emulator().state
    with state.lock:
        return state.accounts.get(hint) or state.account_by_email(hint)


def _get_or_create(email: str) -> Account:
    state = get_emulator().state
    with state.lock:
        account = state.account_by_email(email)
        if account is None:
            account = state.add_account(email)
        return account


def _signed_in_accounts() -> list[Account]:
    state = get_emulator().state
    with state.lock:
        known = [state.accounts.get(str(sub)) for sub in session.get("accounts", [])]
    return [a for a in known if a is not None]


def _session_choice(auth: AuthRequest, signed_in: list[Account]) -> Account | None:
    if auth.login_hint:
        hint = auth.login_hint.lower()
        return next((a for a in signed_in if hint in (a.sub, a.email.lower())), None)
    return signed_in[0] if len(signed_in) == 1 else None


def _sign_in(account: Account) -> None:
    subs = [s for s in session.get("accounts", []) if s != account.sub]
    session["accounts"] = [account.sub, *subs]
    session["active"] = account.sub


def _active_account() -> Account | None:
    state = get_emulator().state
    with state.lock:
        return state.accounts.get(str(session.get("active", "")))


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return str(session["csrf"])


def _chooser(auth: AuthRequest, message: str | None = None) -> Response:
    state = get_emulator().state
    with state.lock:
        accounts = sorted(state.accounts.values(), key=lambda a: a.email)
    signed_in = [a.email for a in _signed_in_accounts()]
    # Google lists the accounts signed in to this browser first.
    accounts.sort(key=lambda a: a.email not in signed_in)
    page = render_template(
        "emulator/chooser.html",
        accounts=accounts,
        signed_in=signed_in,
        client_id=auth.client_id,
        action=request.full_path,
        csrf=_csrf(),
        message=message,
        login_hint=auth.login_hint or "",
    )
    return Response(page, status=200, mimetype="text/html")


def _consent_page(auth: AuthRequest, account: Account) -> Response:
    page = render_template(
        "emulator/consent.html",
        account=account,
        client_id=auth.client_id,
        identity=[s for s in auth.scopes if s in IDENTITY_SCOPES],
        scopes=[s for s in auth.scopes if s not in IDENTITY_SCOPES],
        action=request.full_path,
        switch=_path_with_prompt("select_account"),
        csrf=_csrf(),
    )
    return Response(page, status=200, mimetype="text/html")


def _path_with_prompt(prompt: str) -> str:
    """Return this authorization request's path with its `prompt` replaced."""
    args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "prompt"}
    return url_for("emulator_authorize.authorize", **args, prompt=prompt)


def _error_page(refusal: PageError) -> Response:
    page = render_template(
        "emulator/error.html",
        error=refusal.error,
        description=refusal.description,
        status=refusal.status_code,
    )
    return Response(page, status=refusal.status_code, mimetype="text/html")
