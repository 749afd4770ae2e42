"""What jobs may use: withhold granted scopes, give them back, or drop them at Google.

Google keeps earlier grants (`include_granted_scopes=true`), so a new consent can only add.
The broker honours an unticked scope by withholding it; really dropping one at Google means
revoking the whole grant and asking again for the kept set.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from broker import audit, scopes
from broker.connections.connect import (
    ACTION,
    ConnectService,
    has_live_refresh_token,
    offered_scopes,
)
from broker.connections.revoke import mark_disconnected
from broker.identity import Refusal
from broker.models import AccessToken, Connection, Policy, User

Revoke = Callable[[Iterable[uuid.UUID]], dict[uuid.UUID, bool]]


@dataclass(frozen=True)
class AccessChange:
    """What an update of access did: scopes withheld, scopes given back, or Google's URL."""

    withheld: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    google_url: str | None = None


@dataclass(frozen=True)
class Removal:
    """The outcome of "Remove at Google": Google's URL for the kept set, or why not.

    `problem` is `nothing_withheld`, `nothing_kept` (that is a disconnect) or
    `revoke_failed` (Google could not be reached; nothing changed).
    """

    google_url: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class JobAccess:
    """A connection's Gmail scopes as the page shows them: what jobs may use, what is held."""

    usable: list[str]
    withheld: list[str]


def job_access(connection: Connection | None) -> JobAccess:
    """Return what jobs may use of an open connection, and what its user withholds."""
    if connection is None or connection.status == "revoked":
        return JobAccess([], [])
    granted = scopes.gmail_only(connection.granted_scopes)
    held = set(connection.withheld_scopes or ())
    return JobAccess([s for s in granted if s not in held], [s for s in granted if s in held])


def _drop_tokens_carrying(session: Session, connection_id: uuid.UUID, held: set[str]) -> None:
    """Delete stored access tokens that carry any of these scopes."""
    rows = session.execute(
        select(AccessToken.scope_key, AccessToken.scopes)
        .where(AccessToken.connection_id == connection_id)
    ).all()
    doomed = [key for key, carried in rows if held & set(carried or ())]
    if doomed:
        session.execute(delete(AccessToken).where(
            AccessToken.connection_id == connection_id, AccessToken.scope_key.in_(doomed)
        ))


class AccessService:
    """Change which granted scopes jobs may use, and drop withheld ones at Google."""

    def __init__(self, connect: ConnectService, revoke: Revoke) -> None:
        self.connect = connect
        self.db = connect.db
        self.clock = connect.clock
        self.revoke = revoke

    def update(
        self, user_id: uuid.UUID, binding: str, requested: list[str], *, ip: str
    ) -> AccessChange:
        """Let jobs use exactly the ticked scopes; go to Google only for ones it lacks."""
        with self.db.transaction() as session:
            user = session.get(User, user_id)
            policy = session.get(Policy, user.tenant_id) if user else None
            if user is None or policy is None:
                raise Refusal("signin_required", action=ACTION)
            offered = set(offered_scopes(policy))
            try:
                wanted = set(scopes.gmail_only(scopes.normalise(requested)))
            except scopes.InvalidScope:
                raise Refusal("scope_not_offered", action=ACTION, tenant_id=user.tenant_id,
                              user_id=user.id) from None
            if not wanted or not wanted <= offered:
                raise Refusal("scope_not_offered", action=ACTION, tenant_id=user.tenant_id,
                              user_id=user.id, details={"requested": sorted(wanted)})
            connection = session.scalar(
                select(Connection).where(Connection.user_id == user.id).with_for_update()
            )
            if connection is None or connection.status == "revoked":
                change = AccessChange()
            else:
                change = self._withhold(session, connection, wanted, offered, ip)
            needs_google = (
                connection is None or not has_live_refresh_token(connection)
                or not wanted <= set(connection.granted_scopes)
            )
        if needs_google:
            url = self.connect.start(user_id, binding, sorted(wanted))
            return AccessChange(change.withheld, change.restored, url)
        return change

    def _withhold(
        self, session: Session, connection: Connection, wanted: set[str], offered: set[str],
        ip: str,
    ) -> AccessChange:
        """Record the unticked granted scopes as withheld and give back the ticked ones."""
        before = set(connection.withheld_scopes or ())
        granted = set(scopes.gmail_only(connection.granted_scopes))
        # Scopes the form does not show (no longer offered) keep whatever they had.
        after = (before - offered) | ((granted & offered) - wanted)
        withheld, restored = sorted(after - before), sorted(before - after)
        if not withheld and not restored:
            return AccessChange()
        connection.withheld_scopes = sorted(after)
        if withheld:
            _drop_tokens_carrying(session, connection.id, set(withheld))
        for action, changed in (("connection.scopes_withheld", withheld),
                                ("connection.scopes_restored", restored)):
            if changed:
                audit.record(
                    session, now=self.clock(), action=action, tenant_id=connection.tenant_id,
                    actor_type="user", actor_id=str(connection.user_id),
                    subject_user_id=connection.user_id, ip=ip, scopes=changed,
                    details={"withheld": sorted(after)},
                )
        return AccessChange(withheld, restored)

    def remove_at_google(self, user_id: uuid.UUID, binding: str, *, ip: str) -> Removal:
        """Revoke the grant at Google, then ask Google again for the kept scopes only."""
        with self.db.transaction(write=False) as session:
            connection = session.scalar(select(Connection).where(Connection.user_id == user_id))
            access = job_access(connection)
            if connection is None or not access.withheld:
                return Removal(problem="nothing_withheld")
            if not access.usable:
                return Removal(problem="nothing_kept")
            connection_id, kept, dropped = connection.id, access.usable, access.withheld
        # Google is called holding no transaction; a failed revocation changes nothing.
        if not self.revoke([connection_id]).get(connection_id):
            return Removal(problem="revoke_failed")
        with self.db.transaction() as session:
            connection = session.scalar(
                select(Connection).where(Connection.id == connection_id).with_for_update()
            )
            if connection is not None and connection.status != "revoked":
                mark_disconnected(
                    session, connection, revoked=True, actor_type="user",
                    actor_id=str(user_id), reason="scopes_removed",
                )
                audit.record(
                    session, now=self.clock(), action="connection.scopes_removed",
                    tenant_id=connection.tenant_id, actor_type="user", actor_id=str(user_id),
                    subject_user_id=user_id, ip=ip, scopes=dropped, details={"kept": kept},
                )
        # Nothing is granted at Google any more: the consent screen shows the kept set.
        return Removal(google_url=self.connect.start(user_id, binding, kept, force_consent=True))
