"""A secret shown once after a POST: sealed in a short-lived row tied to the browser session.

The POST keeps the secret here and redirects; the GET takes it (the row is deleted) and shows
it. A reload finds nothing, so it neither repeats the action nor shows the secret again. The
secret never travels in a URL or a cookie (the Flask session cookie is signed, not encrypted).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

from sqlalchemy import delete
from sqlalchemy.orm import Session

from broker.db import get_db
from broker.keys import CryptoError, KeyService, get_keys
from broker.models import WorkerState
from broker.web import guard
from broker.web.admin import access

PREFIX = "shown_once:"
FIELD = "shown_once"
TTL = dt.timedelta(minutes=10)


def _name(browser_session_id: uuid.UUID) -> str:
    return PREFIX + str(browser_session_id)


def keep(
    session: Session, keys: KeyService, *, tenant_id: uuid.UUID,
    browser_session_id: uuid.UUID, payload: dict[str, str], now: dt.datetime,
) -> None:
    """Seal a payload for the next page this browser session opens (replacing any older one)."""
    # Rows nobody came back for go with the next write: they are sealed, but need not linger.
    session.execute(
        delete(WorkerState).where(
            WorkerState.name.startswith(PREFIX, autoescape=True), WorkerState.updated_at < now - TTL
        )
    )
    name = _name(browser_session_id)
    sealed = keys.seal(session, tenant_id, name, FIELD, json.dumps(payload).encode())
    row = session.get(WorkerState, name)
    if row is None:
        session.add(WorkerState(name=name, value=sealed.hex(), updated_at=now))
    else:
        row.value, row.updated_at = sealed.hex(), now


def take(
    session: Session, keys: KeyService, *, tenant_id: uuid.UUID,
    browser_session_id: uuid.UUID, now: dt.datetime, about: tuple[str, str],
) -> dict[str, str] | None:
    """Return the payload kept for this session about (key, value) and forget it; else None.

    A payload about something else stays: opening another client's page must not lose the
    secret still waiting to be shown.
    """
    name = _name(browser_session_id)
    row = session.get(WorkerState, name, with_for_update=True)
    if row is None:
        return None
    if row.updated_at < now - TTL:
        session.delete(row)
        return None
    try:
        opened = keys.open(session, tenant_id, name, FIELD, bytes.fromhex(row.value))
    except (CryptoError, ValueError):
        # A retired key or a row of another tenant: the secret is simply no longer shown.
        session.delete(row)
        return None
    payload = {str(k): str(v) for k, v in json.loads(opened).items()}
    key, value = about
    if payload.get(key) != value:
        return None
    session.delete(row)
    return payload


def keep_for_admin(session: Session, payload: dict[str, str]) -> None:
    """Keep a payload for the signed-in admin's next page (in the caller's transaction)."""
    state = guard.current()
    assert state.browser_session is not None  # noqa: S101 - require_admin ran
    keep(session, get_keys(), tenant_id=access.tenant_id(),
         browser_session_id=state.browser_session.id, payload=payload, now=guard.now())


def take_for_admin(about: tuple[str, str]) -> dict[str, str] | None:
    """Take what was kept for the signed-in admin about (key, value), in its own transaction."""
    state = guard.current()
    assert state.browser_session is not None  # noqa: S101 - require_admin ran
    with get_db().transaction() as session:
        return take(session, get_keys(), tenant_id=access.tenant_id(),
                    browser_session_id=state.browser_session.id, now=guard.now(), about=about)
