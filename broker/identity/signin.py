"""Sign in with Google: start the OIDC round trip, finish it into a fresh server-side session."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from werkzeug.datastructures import MultiDict

from broker import audit
from broker.clientip import IPAddress, ip_in
from broker.identity.flow import FlowService, complete
from broker.identity.membership import ACTION, resolve_member
from broker.identity.refusals import Refusal
from broker.identity.sessions import begin, end_session, open_session
from broker.models import Policy
from broker.scopes import IDENTITY

SIGNIN_SCOPES = ["openid", "email", "profile"]


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

    def start(self, *, binding: str, next_url: str | None, silent_hint: str | None = None) -> str:
        """Store a transaction bound to the browser and return Google's authorization URL."""
        self.google.discovery()  # any network wait happens before the write transaction
        prompt = "none" if silent_hint else None
        with self.db.transaction() as session:
            started = begin(
                session, self.keys, purpose="signin", binding=binding, now=self.clock(),
                scopes=list(IDENTITY), prompt=prompt, next_url=next_url,
            )
        return self.google.authorize_url(
            redirect_uri=self.redirect_uri, scopes=SIGNIN_SCOPES, state=started.state,
            nonce=started.nonce, code_verifier=started.code_verifier, prompt=prompt,
            login_hint=silent_hint,
        )

    def finish(
        self, args: MultiDict[str, str], *, binding: str | None, ip: IPAddress, user_agent: str,
        previous_session: uuid.UUID | None = None,
    ) -> SignedIn:
        """Check the callback, decide membership and open a new session, or refuse."""
        done = complete(
            self.db, self.keys, self.google, args, purpose="signin", binding=binding,
            redirect_uri=self.redirect_uri, now=self.clock(), action=ACTION,
        )
        now = self.clock()
        with self.db.transaction() as session:
            user = resolve_member(session, done.claims)
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
            token = open_session(
                session, user, policy, now=now, ip=ip, user_agent=user_agent
            )
            user.last_login_at = now
            user.last_seen_at = now
            audit.record(
                session, action="signin", tenant_id=user.tenant_id, actor_type="user",
                actor_id=str(user.id), subject_user_id=user.id, ip=str(ip),
                details={"email": user.email, "silent": done.transaction.prompt == "none"},
            )
            signed_in = SignedIn(
                token, user.id, done.transaction.next or "/connections",
                policy.session_max_age, policy.keep_connected,
            )
        return signed_in
