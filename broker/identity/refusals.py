"""Refusals of the browser flows: a reason code, an HTTP status and plain words for the page."""

from __future__ import annotations

import uuid
from typing import Any

# reason -> (status, title, explanation). The page shows all three; the audit keeps the code.
REASONS: dict[str, tuple[int, str, str]] = {
    "unknown_domain": (
        403, "Your organization does not use this broker",
        "The Google account's Workspace domain is not registered with any organization here.",
    ),
    "email_unverified": (
        403, "Your email address is not verified",
        "Google says this account's email address is not verified, so it cannot sign in.",
    ),
    "not_invited": (
        403, "This account has not been invited",
        "Personal Google accounts can sign in only when an administrator invited that exact "
        "address, in an organization that allows personal accounts.",
    ),
    "tenant_mismatch": (
        403, "This account belongs to another organization",
        "This sign-in was started for one organization, but this Google account belongs to a "
        "different one here. Use your own organization's sign-in link, or start from the "
        "start page.",
    ),
    "unknown_tenant": (
        404, "This sign-in link names no organization",
        "No organization here has the name in this link. Check the link your administrator "
        "sent you.",
    ),
    "bad_signin_link": (
        400, "This sign-in link is malformed",
        "Its organization or account hint is not valid. Check the link your administrator "
        "sent you.",
    ),
    "account_conflict": (
        403, "This address belongs to another Google account",
        "A different Google account already signed in with this email address. Ask your "
        "administrator to remove the old user first.",
    ),
    "user_suspended": (
        403, "Your account is suspended", "An administrator suspended your account.",
    ),
    "ip_not_allowed": (
        403, "Sign-in is not allowed from this network",
        "Your organization allows sign-in only from certain networks, and this is not one.",
    ),
    "access_denied": (
        403, "Google access was not granted",
        "You cancelled on Google's page, so nothing was changed.",
    ),
    "bad_state": (
        400, "This sign-in link is not valid",
        "The answer from Google does not belong to any sign-in started here. Start again.",
    ),
    "state_expired": (
        400, "This sign-in took too long",
        "More than ten minutes passed since it started. Start again.",
    ),
    "state_replayed": (
        400, "This sign-in link was already used",
        "Each answer from Google can be used once. Start again.",
    ),
    "foreign_browser": (
        400, "This sign-in was started in another browser",
        "Finish signing in in the browser where you started, or start again here.",
    ),
    "issuer_mismatch": (
        400, "The answer did not come from Google",
        "The authorization answer names an unexpected issuer.",
    ),
    "id_token_invalid": (
        400, "Google's identity answer could not be verified",
        "The identity token failed verification. Start again.",
    ),
    "wrong_account": (
        403, "That is not your Google account",
        "You chose a different Google account than the one you are signed in with. Connect "
        "the mailbox of your own account.",
    ),
    "scope_not_offered": (
        400, "That access is not offered",
        "Your organization does not offer one of the requested Gmail permissions.",
    ),
    "no_refresh_token": (
        502, "Google did not grant lasting access",
        "Google did not return a refresh token even after asking for consent again.",
    ),
    "code_rejected": (
        400, "Google rejected the sign-in answer",
        "The authorization code was refused (already used or expired). Start again.",
    ),
    "google_error": (
        400, "Google reported a problem", "Google answered with an error. Start again.",
    ),
    "google_unavailable": (
        503, "Google could not be reached", "Try again in a moment.",
    ),
    "broker_misconfigured": (
        503, "The broker is misconfigured",
        "Google rejected the broker's own OAuth client. Tell your administrator.",
    ),
    "google_not_configured": (
        503, "Google sign-in is not configured",
        "This broker has no Google OAuth client yet (BROKER_GOOGLE_CLIENT_ID and "
        "BROKER_GOOGLE_CLIENT_SECRET). Tell your administrator.",
    ),
    "csrf_failed": (
        403, "This form has expired",
        "The page was open too long or came from elsewhere. Go back, reload and try again.",
    ),
    "signin_required": (
        403, "Please sign in", "This action needs a signed-in session.",
    ),
}


class Refusal(Exception):
    """A refused browser flow; the page handler audits it as `action` and renders its reason."""

    def __init__(
        self, reason: str, *, action: str | None = None, tenant_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None, details: dict[str, Any] | None = None,
        email: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason if reason in REASONS else "google_error"
        self.action = action
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.details = dict(details or {})
        if email:
            self.details["email"] = email

    @property
    def status_code(self) -> int:
        """Return the HTTP status of the page."""
        return REASONS[self.reason][0]

    @property
    def title(self) -> str:
        """Return the page's heading."""
        return REASONS[self.reason][1]

    @property
    def explanation(self) -> str:
        """Return the page's plain explanation."""
        return REASONS[self.reason][2]
