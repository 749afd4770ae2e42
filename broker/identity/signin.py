"""Sign in with Google: start the OIDC round trip, finish it into a fresh server-side session."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from broker import audit
from broker.clientip import IPAddress, ip_in
from broker.identity.flow import Completed, FlowService, complete
from broker.identity.membership import ACTION, ChooseTenant, resolve_member
from broker.identity.refusals import Refusal
from broker.identity.sessions import begin, end_session, open_session
from broker.models import Policy, Tenant
from broker.scopes import IDENTITY
from broker.tenancy import tenants

SIGNIN_SCOPES = ["openid", "email", "profile"]
# An address's printable ASCII, without spaces: Google takes the hint as given, we echo it.
LOGIN_HINT = re.compile(r"^[!-?A-~]{1,64}@[!-?A-~]{1,255}$")


def signin_url(
    session: Session, public_url: str, tenant_id: uuid.UUID, login_hint: str | None = None
) -> str | None:
    """Return the sign-in link an invited personal account of this tenant must use.

    None when the tenant admits no personal accounts (its members come by Workspace domain).
    """
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not tenant.allow_consumer_accounts:
        return None
    query = {"tenant": tenant.slug, **({"login_hint": login_hint} if login_hint else {})}
    return f"{public_url.rstrip('/')}/auth/login?{urlencode(query)}"


@dataclass(frozen=True)
class SignedIn:
    """A completed sign-in: the new session's cookie value and where to go next."""

    session_token: str
    user_id: uuid.UUID
    next_url: str
    max_age: int
    keep_connected: bool


class SignInService(FlowService):
    """Run the OIDC authorization-code flow with PKCE, state and nonce for people."""

    callback_path = "/auth/callback"

    def start(
        self, *, binding: str, next_url: str | None, silent_hint: str | None = None,
        tenant_slug: str | None = None, login_hint: str | None = None,
    ) -> str:
        """Store a transaction bound to the browser and return Google's authorization URL.

        `tenant_slug` scopes the sign-in to one tenant (an invited personal account joins
        only that one); an unknown or malformed slug is refused before anything is stored.
        """
        if tenant_slug is not None and not tenants.SLUG.match(tenant_slug):
            raise Refusal("bad_signin_link")
        if login_hint is not None and not LOGIN_HINT.match(login_hint):
            raise Refusal("bad_signin_link")
        self.google.discovery()  # any network wait happens before the write transaction
        prompt = "none" if silent_hint else None
        with self.db.transaction() as session:
            tenant_id = None
            if tenant_slug is not None:
                tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == tenant_slug))
                if tenant_id is None:
                    raise Refusal("unknown_tenant")
            started = begin(
                session, self.keys, purpose="signin", binding=binding, now=self.clock(),
                scopes=list(IDENTITY), prompt=prompt, next_url=next_url,
                signin_tenant_id=tenant_id,
            )
        return self.google.authorize_url(
            redirect_uri=self.redirect_uri, scopes=SIGNIN_SCOPES, state=started.state,
            nonce=started.nonce, code_verifier=started.code_verifier, prompt=prompt,
            login_hint=silent_hint or login_hint,
        )

    def finish(
        self, args: MultiDict[str, str], *, binding: str | None, ip: IPAddress, user_agent: str,
        previous_session: uuid.UUID | None = None,
    ) -> SignedIn:
        """Check the callback, decide membership and open a new session, or refuse.

        Raises ChooseTenant, audited and with nothing bound, when a personal account has
        invitations but the sign-in named no tenant.
        """
        done = complete(
            self.db, self.keys, self.google, args, purpose="signin", binding=binding,
            redirect_uri=self.redirect_uri, now=self.clock(), action=ACTION,
        )
        now = self.clock()
        try:
            with self.db.transaction() as session:
                return self._open(
                    session, done, now=now, ip=ip, user_agent=user_agent,
                    previous_session=previous_session,
                )
        except ChooseTenant as choice:
            with self.db.transaction() as session:
                audit.record(
                    session, action=ACTION, tenant_id=None, actor_type="user",
                    outcome="denied", reason="choose_tenant", ip=str(ip),
                    details={
                        "email": choice.email,
                        "tenants": [invitation.slug for invitation in choice.invitations],
                    },
                )
            raise

    def _open(
        self, session: Session, done: Completed, *, now: dt.datetime, ip: IPAddress,
        user_agent: str, previous_session: uuid.UUID | None,
    ) -> SignedIn:
        user = resolve_member(session, done.claims, done.transaction.signin_tenant_id)
        session.flush()
        policy = session.get(Policy, user.tenant_id)
        if policy is None:
            policy = Policy(tenant_id=user.tenant_id)
            session.add(policy)
            session.flush()
        if not ip_in(ip, policy.login_ip_ranges):
            raise Refusal(
                "ip_not_allowed", action=ACTION, tenant_id=user.tenant_id, user_id=user.id,
                email=user.email, details={"ip": str(ip)},
            )
        if previous_session is not None:
            end_session(session, previous_session, "logout", now)
        token = open_session(session, user, policy, now=now, ip=ip, user_agent=user_agent)
        user.last_login_at = now
        user.last_seen_at = now
        audit.record(
            session, action="signin", tenant_id=user.tenant_id, actor_type="user",
            actor_id=str(user.id), subject_user_id=user.id, ip=str(ip),
            details={"email": user.email, "silent": done.transaction.prompt == "none"},
        )
        return SignedIn(
            token, user.id, done.transaction.next or "/connections",
            policy.session_max_age, policy.keep_connected,
        )
