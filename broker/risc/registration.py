"""The registration actions behind `broker risc register|verify|status`: validate, act, audit."""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Flask
from sqlalchemy import select

from broker import audit
from broker.clock import get_clock, get_sleep
from broker.db import get_db
from broker.models import SecurityEvent
from broker.risc.stream import ServiceAccount, Stream, StreamError, check_receiver

POLL = 0.2


def default_receiver(app: Flask) -> str:
    """Return the receiver URL under BROKER_PUBLIC_URL."""
    return str(app.config["BROKER"].PUBLIC_URL).rstrip("/") + "/risc/events"


def register(app: Flask, account: ServiceAccount, receiver: str, *, actor: str,
             stream: Stream | None = None) -> dict[str, Any]:
    """Register the receiver with Google's stream; audit it on the system chain."""
    receiver = check_receiver(receiver)
    body = (stream or Stream(app.config["BROKER"], account)).register(receiver)
    with get_db(app).transaction() as session:
        audit.record(
            session, now=get_clock(app)(), action="risc.stream_register", tenant_id=None,
            actor_type="admin", actor_id=actor,
            details={"url": receiver, "service_account": account.email[:200]},
        )
    return body


def verify(app: Flask, account: ServiceAccount, *, timeout: float,
           stream: Stream | None = None) -> str:
    """Ask Google for a `verification` event and wait until the receiver has recorded it."""
    state = secrets.token_urlsafe(16)
    (stream or Stream(app.config["BROKER"], account)).verify(state)
    sleep = get_sleep(app)
    deadline = time.monotonic() + timeout  # a duration: the app clock may stand still
    while True:
        with get_db(app).transaction(write=False) as session:
            found = session.scalar(select(SecurityEvent.id).where(
                SecurityEvent.kind == "verification", SecurityEvent.detail == state))
        if found is not None:
            return state
        if time.monotonic() >= deadline:
            raise StreamError(
                f"no verification event arrived within {timeout:g} s; is BROKER_RISC on "
                "and the receiver reachable from Google?"
            )
        sleep(POLL)


def status(app: Flask, account: ServiceAccount, *, stream: Stream | None = None
           ) -> dict[str, Any]:
    """Return the stream's configuration and status at Google."""
    return (stream or Stream(app.config["BROKER"], account)).status()
