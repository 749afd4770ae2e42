"""Who is signed in: the sign-in flow, membership, browser sessions, OAuth transactions."""

from broker.identity.flow import (
    FlowService,
    SilentSignInFailed,
    anonymous_refusal,
    complete,
    google_refusal,
)
from broker.identity.membership import ChooseTenant, Invitation
from broker.identity.refusals import Refusal
from broker.identity.sessions import (
    BINDING_COOKIE,
    SESSION_COOKIE,
    TRANSACTION_TTL,
    SessionState,
    begin,
    cookie_name,
    end_session,
    load_session,
    well_formed,
)
from broker.identity.signin import SignInService, signin_url

__all__ = [
    "BINDING_COOKIE", "SESSION_COOKIE", "TRANSACTION_TTL", "FlowService", "Refusal",
    "SessionState", "SignInService", "SilentSignInFailed", "begin", "complete", "cookie_name",
    "end_session", "google_refusal", "anonymous_refusal", "load_session", "well_formed",
    "ChooseTenant", "Invitation", "signin_url",
]
