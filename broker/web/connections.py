"""Blueprint /connections: the user's page, connect and its callback, access, disconnect."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker import scopes
from broker.connections import (
    ACTION,
    AccessChange,
    AccessService,
    ConnectService,
    disconnect_user,
    job_access,
    own_connection,
    revoke_grants,
)
from broker.db import get_db
from broker.errors import BrokerError, RateLimited
from broker.google import GoogleError, NotConfigured, get_google
from broker.identity import Refusal, anonymous_refusal, google_refusal
from broker.keys import get_keys
from broker.limits import get_limits
from broker.models import User
from broker.tenancy import clients
from broker.web import guard
from broker.web.auth import too_many
from broker.web.errors import audit_refusal, broker_error_page

bp = Blueprint("connections", __name__, url_prefix="/connections")
bp.register_error_handler(BrokerError, broker_error_page)

STATUS_TEXT = {
    "active": "Active",
    "degraded": "Degraded: Google could not be reached at the last refresh; the broker retries",
    "needs_reauth": "Needs re-consent",
    "revoked": "Disconnected",
}
REASON_TEXT = {
    "revoked_or_expired": "access was revoked at Google or expired",
    "reauth_policy": "your organization requires you to sign in to Google again",
    "unused_too_long": "the grant went unused for too long",
    "testing_app_expiry": "the app is in testing mode and its grants last seven days",
    "token_unreadable": "the stored grant can no longer be read",
    "disconnected": "you disconnected it",
    "scopes_removed": "you removed permissions at Google and have not connected again yet",
}
REMOVAL_TEXT = {
    "nothing_withheld": "No permission is withheld, so there is nothing to remove at Google.",
    "nothing_kept": "Every permission is withheld: to remove them all at Google, disconnect.",
    "revoke_failed": "Google could not be reached to revoke the access, so nothing changed. "
                     "Try again later; the withheld permissions stay withheld meanwhile.",
}


def _service() -> ConnectService:
    try:
        google = get_google()
    except NotConfigured:
        raise Refusal("google_not_configured") from None
    return ConnectService(get_db(), get_keys(), google, guard.settings(), guard.clock())


def _access() -> AccessService:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return AccessService(_service(), lambda ids: revoke_grants(app, ids))


def _label(scope: str) -> str:
    return f"{scopes.GMAIL_SCOPES.get(scope, scope)} ({scope.removeprefix(scopes.PREFIX)})"


def _labels(chosen: list[str]) -> str:
    return ", ".join(_label(s) for s in chosen)


def _requested() -> list[str]:
    return [s for value in request.values.getlist("scope") for s in value.split()]


@bp.get("")
@guard.login_required
def index() -> str:
    """Show the user's connection, its scopes and status, and the connect form."""
    user = guard.current_user()
    assert user is not None  # noqa: S101 - login_required guarantees it
    with get_db().transaction(write=False) as session:
        own = own_connection(session, user)
        in_use = clients.scopes_in_use(session, user.tenant_id)
    connection, offered = own.connection, own.offered
    connected = connection is not None and connection.status != "revoked"
    # What jobs can use is what Google granted minus what the user withholds.
    access = job_access(connection)
    # Least privilege: a first connect pre-ticks only what some active job may ask for.
    unused = [scope for scope in offered if scope not in in_use]
    first = not (access.usable or access.withheld)
    return render_template(
        "connections/index.html", user=user, tenant=own.tenant, connection=connection,
        connected=connected, granted=access.usable, withheld=access.withheld, offered=offered,
        ticked=set(offered) & in_use if first else set(access.usable), unused=unused,
        status_text=STATUS_TEXT, reason_text=REASON_TEXT,
        google_configured=guard.settings().google_configured,
    )


@bp.get("/connect")
@guard.login_required
def connect() -> Response:
    """Start connecting Gmail with the ticked scopes (a GET: it only writes a transaction)."""
    user = guard.current_user()
    token = guard.session_token()
    assert user is not None and token is not None  # noqa: S101 - login_required
    requested = _requested()
    if not requested:
        flash("Choose at least one Gmail permission.", "error")
        return redirect(url_for("connections.index"), 303)
    try:
        url = _service().start(user.id, token, requested)
    except Refusal as refused:
        if refused.reason == "scope_not_offered":
            refused.details["not_offered"] = _not_offered(user, requested)
        raise
    except GoogleError as failed:
        raise google_refusal(
            failed, action=ACTION, tenant_id=user.tenant_id, user_id=user.id
        ) from None
    return redirect(url, 302)


def _not_offered(user: User, requested: list[str]) -> list[str]:
    """Return the short names of requested scopes the tenant does not offer (for the page)."""
    with get_db().transaction(write=False) as session:
        offered = set(own_connection(session, user).offered)
    names = []
    for value in requested:
        try:
            full = scopes.full_name(value)
        except scopes.InvalidScope:
            full = value
        if full not in offered:
            # Typed by someone: shown escaped, kept short and printable.
            name = "".join(c for c in full.removeprefix(scopes.PREFIX) if c.isprintable())
            names.append(name[:60])
    return list(dict.fromkeys(names))[:10]


def _already_connected(user: User) -> bool:
    with get_db().transaction(write=False) as session:
        connection = own_connection(session, user).connection
    return connection is not None and connection.status == "active"


@bp.get("/callback")
def callback() -> Response:
    """Store the grant of the signed-in user's own mailbox and answer 303 to /connections."""
    try:
        get_limits().hit_callback(str(guard.ip()))
    except RateLimited as exc:
        return too_many(exc, "Too many answers from Google from your network.")
    user = guard.current_user()
    if user is None:
        raise anonymous_refusal("signin_required", flow="connect")
    try:
        result = _service().finish(
            request.args, user_id=user.id, binding=guard.session_token(), ip=str(guard.ip())
        )
    except Refusal as refused:
        # A reload of the callback after it worked: the state is spent, the grant is there.
        if refused.reason != "state_replayed" or not _already_connected(user):
            raise
        audit_refusal(refused)
        flash("Gmail is already connected. That answer from Google was already used, so "
              "nothing changed.", "info")
        return redirect(url_for("connections.index"), 303)
    except GoogleError as failed:
        raise google_refusal(
            failed, action=ACTION, tenant_id=user.tenant_id, user_id=user.id
        ) from None
    if result.retry_url:
        return redirect(result.retry_url, 303)
    if result.granted:
        flash("Gmail is connected.", "success")
    else:
        flash("You did not grant any Gmail access, so nothing was connected.", "warning")
    for scope in result.not_granted:
        flash(f"Not granted: {_label(scope)}", "warning")
    return redirect(url_for("connections.index"), 303)


@bp.get("/disconnect")
@guard.login_required
def confirm_disconnect() -> str:
    """Ask for confirmation before disconnecting."""
    return render_template("connections/disconnect.html")


@bp.post("/disconnect")
@guard.login_required
def do_disconnect() -> Response:
    """Revoke at Google, erase the stored grant and audit it."""
    user = guard.current_user()
    assert user is not None  # noqa: S101 - login_required
    # Google is called before any write transaction opens; the sealed refresh token is
    # kept only while the revocation is pending, so the worker can retry it.
    revoked = disconnect_user(current_app._get_current_object(), user)  # type: ignore[attr-defined]
    if revoked is None:
        flash("Gmail was not connected.", "info")
    elif revoked:
        flash("Gmail is disconnected and the access was revoked at Google.", "success")
    else:
        flash("Gmail is disconnected. Google could not be reached to revoke the access; "
              "the broker will keep trying.", "warning")
    return redirect(url_for("connections.index"), 303)


@bp.post("/access")
@guard.login_required
def update_access() -> Response:
    """Let jobs use exactly the ticked permissions; go to Google only for new ones."""
    user = guard.current_user()
    token = guard.session_token()
    assert user is not None and token is not None  # noqa: S101 - login_required
    requested = _requested()
    if not requested:
        flash("Choose at least one Gmail permission; to stop all access, disconnect.", "error")
        return redirect(url_for("connections.index"), 303)
    try:
        change = _access().update(user.id, token, requested, ip=str(guard.ip()))
    except GoogleError as failed:
        raise google_refusal(
            failed, action=ACTION, tenant_id=user.tenant_id, user_id=user.id
        ) from None
    _say(change)
    if change.google_url:
        return redirect(change.google_url, 303)
    return redirect(url_for("connections.index"), 303)


def _say(change: AccessChange) -> None:
    if change.withheld:
        flash(f"Jobs can no longer use: {_labels(change.withheld)}. Google still holds this "
              "permission; use Remove at Google to drop it there too.", "success")
    if change.restored:
        flash(f"Jobs may use again: {_labels(change.restored)}.", "success")
    if not (change.withheld or change.restored or change.google_url):
        flash("Nothing changed.", "info")


@bp.get("/remove")
@guard.login_required
def confirm_remove() -> str:
    """Say what removing the withheld permissions at Google does, before doing it."""
    user = guard.current_user()
    assert user is not None  # noqa: S101 - login_required
    with get_db().transaction(write=False) as session:
        access = job_access(own_connection(session, user).connection)
    return render_template("connections/remove.html", kept=access.usable,
                           withheld=access.withheld)


@bp.post("/remove")
@guard.login_required
def do_remove() -> Response:
    """Revoke the grant at Google, then ask Google again for the kept permissions."""
    user = guard.current_user()
    token = guard.session_token()
    assert user is not None and token is not None  # noqa: S101 - login_required
    try:
        removal = _access().remove_at_google(user.id, token, ip=str(guard.ip()))
    except GoogleError as failed:
        raise google_refusal(
            failed, action=ACTION, tenant_id=user.tenant_id, user_id=user.id
        ) from None
    if removal.google_url:
        return redirect(removal.google_url, 303)
    flash(REMOVAL_TEXT.get(removal.problem or "", "Nothing changed."), "error")
    return redirect(url_for("connections.index"), 303)
