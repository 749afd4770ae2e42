"""Blueprint /auth: Google sign-in, its callback and sign-out."""

from __future__ import annotations

import uuid

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker.db import get_db
from broker.errors import BrokerError, RateLimited
from broker.google import GoogleError, NotConfigured, get_google
from broker.identity import (
    ChooseTenant,
    Refusal,
    SignInService,
    SilentSignInFailed,
    google_refusal,
    signin_url,
)
from broker.keys import get_keys, new_secret
from broker.limits import get_limits
from broker.tenancy import users
from broker.web import guard
from broker.web.errors import broker_error_page

bp = Blueprint("auth", __name__, url_prefix="/auth")
bp.register_error_handler(BrokerError, broker_error_page)


def _service() -> SignInService:
    try:
        google = get_google()
    except NotConfigured:
        raise Refusal("google_not_configured") from None
    return SignInService(get_db(), get_keys(), google, guard.settings(), guard.clock())


@bp.app_template_global("signin_url")
def signin_link(tenant_id: uuid.UUID, login_hint: str | None = None) -> str | None:
    """Return the tenant-scoped sign-in link to send an invited personal account, if any."""
    with get_db().transaction(write=False) as session:
        return signin_url(session, guard.settings().PUBLIC_URL, tenant_id, login_hint)


@bp.get("/login")
def login() -> Response:
    """Start a sign-in: a transaction bound to this browser, then off to Google."""
    state = guard.current()
    next_url = guard.safe_next(request.args.get("next"))
    if state.valid:
        return redirect(next_url or url_for("connections.index"))
    try:
        get_limits().hit_login(str(guard.ip()))
    except RateLimited as exc:
        limited = RateLimited(
            "Too many sign-in attempts from your network. Please wait a minute and try again.",
            headers=exc.headers,
        )
        response = broker_error_page(limited)
        response.headers.update(limited.headers)
        return response
    if any(len(request.args.getlist(name)) > 1 for name in ("tenant", "login_hint")):
        raise Refusal("bad_signin_link")
    service = _service()
    browser = guard.binding() or new_secret()
    # keep_connected: a session that ended by time comes back without a click, if Google agrees.
    hint = state.user.email if state.may_resume and state.user else None
    try:
        url = service.start(
            binding=browser, next_url=next_url, silent_hint=hint,
            tenant_slug=request.args.get("tenant"), login_hint=request.args.get("login_hint"),
        )
    except GoogleError as failed:
        raise google_refusal(failed) from None
    response = redirect(url, 302)
    guard.set_binding_cookie(response, browser)
    return response


def too_many(exc: RateLimited, text: str) -> Response:
    """Answer a rate-limited page request: readable 429 words, Retry-After kept."""
    limited = RateLimited(f"{text} Please wait a minute and try again.", headers=exc.headers)
    response = broker_error_page(limited)
    response.headers.update(limited.headers)
    return response


@bp.get("/callback")
def callback() -> Response:
    """Finish a sign-in and answer 303 to a clean URL, or refuse on a page."""
    try:
        get_limits().hit_callback(str(guard.ip()))
    except RateLimited as exc:
        return too_many(exc, "Too many sign-in answers from your network.")
    state = guard.current()
    service = _service()
    try:
        signed_in = service.finish(
            request.args, binding=guard.binding(), ip=guard.ip(),
            user_agent=request.headers.get("User-Agent", ""),
            previous_session=state.browser_session.id if state.browser_session else None,
        )
    except SilentSignInFailed:
        flash("Your session ended. Please sign in again.", "warning")
        response = redirect(url_for("home.index"), 303)
        guard.clear_session_cookie(response)
        guard.clear_binding_cookie(response)
        return response
    except ChooseTenant as choice:
        # Nothing was bound: each button starts a new sign-in scoped to the tenant it names.
        response = Response(render_template(
            "auth/choose_tenant.html", invitations=choice.invitations, email=choice.email,
        ), mimetype="text/html")
        if not state.valid:
            guard.clear_session_cookie(response)
        guard.clear_binding_cookie(response)
        return response
    response = redirect(signed_in.next_url, 303)
    guard.set_session_cookie(
        response, signed_in.session_token,
        guard.session_cookie_age(signed_in.max_age, signed_in.keep_connected),
    )
    g.session_cookie_set = True
    guard.clear_binding_cookie(response)
    return response


@bp.post("/logout")
def logout() -> Response:
    """End this session now and forget its cookie."""
    state = guard.current()
    if state.valid and state.browser_session and state.user:
        with get_db().transaction() as session:
            users.sign_out(
                session, state.user, state.browser_session.id, now=guard.now(),
                ip=str(guard.ip()),
            )
    flash("You are signed out.", "info")
    response = redirect(url_for("home.index"), 303)
    guard.clear_session_cookie(response)
    return response
