"""Connect Gmail: ask for the chosen scopes offline, then store the grant sealed."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from broker import audit, scopes, webhooks
from broker.google import TokenResponse
from broker.identity import FlowService, Refusal, begin, complete
from broker.keys import access_token_bound, refresh_token_ids
from broker.models import AccessToken, Connection, Policy, User

ACTION = "connect.refused"


@dataclass(frozen=True)
class Connected:
    """The outcome of a connect callback: what was granted, what was not, or a retry URL."""

    granted: list[str] = field(default_factory=list)
    not_granted: list[str] = field(default_factory=list)
    retry_url: str | None = None


def has_live_refresh_token(connection: Connection | None) -> bool:
    """Say whether the broker holds a refresh token it still believes in (DESIGN §6)."""
    return (
        connection is not None
        and connection.refresh_token is not None
        and connection.status not in ("needs_reauth", "revoked")
    )


def offered_scopes(policy: Policy) -> list[str]:
    """Return the tenant's offered Gmail scopes in full form, skipping unknown names."""
    out = set()
    for name in policy.offered_scopes:
        try:
            out.add(scopes.full_name(name))
        except scopes.InvalidScope:
            continue
    return sorted(s for s in out if scopes.is_gmail(s))


class ConnectService(FlowService):
    """Ask Google for Gmail access for the signed-in user and keep the grant."""

    callback_path = "/connections/callback"

    def start(
        self, user_id: uuid.UUID, binding: str, requested: list[str], *,
        force_consent: bool = False,
    ) -> str:
        """Store a transaction bound to the session and return Google's authorization URL."""
        self.google.discovery()  # any network wait happens before the write transaction
        with self.db.transaction() as session:
            user = session.get(User, user_id)
            policy = session.get(Policy, user.tenant_id) if user else None
            if user is None or policy is None:
                raise Refusal("signin_required", action=ACTION)
            context: dict[str, Any] = {
                "action": ACTION, "tenant_id": user.tenant_id, "user_id": user.id
            }
            try:
                wanted = scopes.gmail_only(scopes.normalise(requested))
            except scopes.InvalidScope:
                raise Refusal("scope_not_offered", **context) from None
            if not wanted or not set(wanted) <= set(offered_scopes(policy)):
                raise Refusal("scope_not_offered", details={"requested": wanted}, **context)
            connection = session.scalar(select(Connection).where(Connection.user_id == user.id))
            # Google shows no screen for scopes it already granted: asking again for one the
            # user withholds must let them see what they are giving back to jobs.
            restoring = has_live_refresh_token(connection) and connection is not None and bool(
                set(wanted) & set(connection.withheld_scopes or ()))
            force_consent = force_consent or restoring
            # Forcing consent burns one of Google's 100 refresh tokens per account and client.
            prompt = "consent" if force_consent or not has_live_refresh_token(connection) else None
            started = begin(
                session, self.keys, purpose="connect", binding=binding, now=self.clock(),
                tenant_id=user.tenant_id, user_id=user.id, scopes=wanted, prompt=prompt,
                next_url="/connections",
            )
            email = user.email
        return self.google.authorize_url(
            # `email` too: the connection records the mailbox's address, and it is already granted.
            redirect_uri=self.redirect_uri, scopes=["openid", "email", *wanted],
            state=started.state,
            nonce=started.nonce, code_verifier=started.code_verifier, access_type="offline",
            prompt=prompt, include_granted_scopes=True, login_hint=email,
        )

    def finish(
        self, args: MultiDict[str, str], *, user_id: uuid.UUID, binding: str | None,
        ip: str,
    ) -> Connected:
        """Check the callback is this user's own mailbox and store what Google granted."""
        done = complete(
            self.db, self.keys, self.google, args, purpose="connect", binding=binding,
            redirect_uri=self.redirect_uri, now=self.clock(), action=ACTION,
        )
        transaction, token, claims = done.transaction, done.token, done.claims
        context: dict[str, Any] = {
            "action": ACTION, "tenant_id": transaction.tenant_id, "user_id": user_id
        }
        if transaction.user_id != user_id:
            raise Refusal("foreign_browser", **context)
        requested = list(transaction.requested_scopes)
        with self.db.transaction() as session:
            user = session.get(User, user_id)
            if user is None:
                raise Refusal("signin_required", **context)
            if not user.google_sub or str(claims.get("sub")) != user.google_sub:
                raise Refusal("wrong_account", email=str(claims.get("email") or ""), **context)
            connection = session.scalar(
                select(Connection).where(Connection.user_id == user.id).with_for_update()
            )
            if token.refresh_token is None and not has_live_refresh_token(connection):
                if transaction.prompt == "consent":
                    raise Refusal("no_refresh_token", **context)
                retry = True
            else:
                retry = False
                granted = scopes.gmail_only(token.scopes)
                not_granted = sorted(set(requested) - set(token.scopes))
                restored: list[str] = []
                if granted:
                    restored = self._store(session, user, connection, token, claims, requested)
                audit.record(
                    session, action="connection.connect", tenant_id=user.tenant_id,
                    actor_type="user", actor_id=str(user.id), subject_user_id=user.id, ip=ip,
                    scopes=granted, outcome="ok" if granted else "denied",
                    reason=None if granted else "nothing_granted",
                    details={"requested": requested, "not_granted": not_granted,
                             "new_refresh_token": token.refresh_token is not None,
                             **({"restored": restored} if restored else {})},
                )
        if retry:
            # No refresh token and none stored: Google only sends one after a shown consent.
            return Connected(retry_url=self.start(user_id, str(binding), requested,
                                                  force_consent=True))
        return Connected(granted=granted, not_granted=not_granted)

    def _store(
        self, session: Session, user: User, connection: Connection | None, token: TokenResponse,
        claims: dict[str, object], requested: list[str],
    ) -> list[str]:
        """Store the grant; return the withheld scopes this consent gave back to jobs."""
        now = self.clock()
        before = connection.status if connection is not None else None
        if connection is None:
            connection = Connection(
                id=uuid.uuid4(), tenant_id=user.tenant_id, user_id=user.id, version=0,
                created_at=now,
            )
            session.add(connection)
        if before in (None, "revoked"):
            event: str | None = "connection.created"
        else:
            event = "connection.recovered" if before in ("needs_reauth", "degraded") else None
        withheld = set(connection.withheld_scopes or ())
        if before == "revoked":
            # A new grant after a disconnect: its history starts now, not at the old one's.
            connection.created_at = now
            connection.last_refresh_at = connection.last_used_at = None
            connection.rejected_refresh_at = None
            withheld = set()
        restored = sorted(withheld & set(requested))
        # Asked for again at Google: given back; no longer granted: nothing left to withhold.
        connection.withheld_scopes = sorted((withheld - set(requested)) & set(token.scopes))
        connection.google_sub = str(claims["sub"])
        connection.email = str(claims.get("email") or user.email)
        connection.granted_scopes = list(token.scopes)
        connection.status = "active"
        connection.status_reason = None
        connection.consecutive_failures = 0
        connection.next_retry_at = None
        # A later revocation of the old grant would also kill this new one.
        connection.revocation_pending = False
        connection.version = (connection.version or 0) + 1
        if token.refresh_token:  # never overwrite a stored refresh token with nothing
            connection.refresh_token = self.keys.seal(
                session, user.tenant_id, connection.id, "refresh_token",
                token.refresh_token.encode(),
            )
            for column, value in refresh_token_ids(token.refresh_token).items():
                setattr(connection, column, value)
        # Google let the user consent again, so the account works: a RISC hold has ended.
        connection.held_at = None
        session.flush()
        session.execute(delete(AccessToken).where(AccessToken.connection_id == connection.id))
        # Google's answer carries every granted scope (include_granted_scopes), withheld ones
        # too: such a token is not kept, so it can never be handed out.
        if not connection.withheld_scopes:
            self._keep_access_token(session, connection, token, now)
        if event:
            webhooks.enqueue(session, user.tenant_id, event, {
                "connection_id": str(connection.id), "user_id": str(user.id),
            })
        return restored

    def _keep_access_token(
        self, session: Session, connection: Connection, token: TokenResponse, now: dt.datetime
    ) -> None:
        access = AccessToken(
            id=uuid.uuid4(), connection_id=connection.id, scope_key=scopes.scope_key(
                s for s in token.scopes if _known(s)
            ), scopes=list(token.scopes), obtained_at=now,
            expires_at=now + dt.timedelta(seconds=max(token.expires_in, 0)),
            token=b"",
        )
        access.token = self.keys.seal(
            session, connection.tenant_id, access.id, "access_token", token.access_token.encode(),
            bound=access_token_bound(connection.id, access.scope_key),
        )
        session.add(access)


def _known(scope: str) -> bool:
    try:
        scopes.full_name(scope)
    except scopes.InvalidScope:
        return False
    return True
