"""A broker served over real HTTP with RISC on, and the emulator's stream pointed at it."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.clock import utcnow
from broker.db import get_db
from broker.emulator.server import serve_in_thread
from broker.identity.sessions import SESSION_COOKIE, open_session
from broker.models import (
    AuditEvent,
    BrowserSession,
    Connection,
    Policy,
    SecurityEvent,
    User,
    WebhookDelivery,
)
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config


@dataclass
class Stream:
    """The served broker, its world and the emulator controls that push events to it."""

    world: World
    url: str

    @property
    def app(self) -> Flask:
        """Return the served broker app."""
        return self.world.app

    @property
    def emulator(self) -> EmulatorControls:
        """Return the emulator's controls."""
        return self.world.emulator

    def send(self, event: str, **fields: Any) -> dict[str, Any]:
        """Have the emulator sign and deliver one event; return the receiver's answer."""
        return dict(self.emulator.control("POST", "risc/send", {"event": event, **fields}))


def risc_config(emulator: EmulatorControls, **overrides: Any) -> dict[str, Any]:
    """Return broker settings with the receiver on and the emulator as transmitter."""
    settings: dict[str, Any] = {
        "RISC": True, "RISC_CONFIG_URL": emulator.url + "/.well-known/risc-configuration",
        "RISC_API_URL": emulator.url,
    }
    return broker_config(emulator, **{**settings, **overrides})


@pytest.fixture
def risc_app(make_app: Callable[..., Flask], emulator: EmulatorControls) -> Flask:
    """A broker app with the receiver on."""
    return make_app(**risc_config(emulator))


@pytest.fixture
def served_risc(risc_app: Flask) -> Iterator[str]:
    """Serve the broker app on a loopback port in a thread; yield its base URL."""
    url, stop = serve_in_thread(risc_app, "127.0.0.1", 0)
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def stream(
    make_world: Callable[..., World], risc_app: Flask, served_risc: str,
    emulator: EmulatorControls,
) -> Stream:
    """A connected user (alice) and the emulator's stream registered to the served broker."""
    world = make_world(app=risc_app)
    emulator.control("POST", "risc/stream", {"url": served_risc + "/risc/events"})
    return Stream(world, served_risc)


def signed_in(app: Flask, user: User) -> FlaskClient:
    """Return a test client holding a fresh browser session of `user`."""
    client = app.test_client()
    with get_db(app).transaction() as session:
        policy = session.get(Policy, user.tenant_id)
        assert policy is not None
        token = open_session(session, user, policy, now=utcnow(),
                             ip=ipaddress.ip_address("127.0.0.1"), user_agent="pytest")
    client.set_cookie(SESSION_COOKIE, token)
    return client


def connection(app: Flask, connection_id: uuid.UUID) -> Connection:
    """Read a connection as stored now."""
    with get_db(app).transaction(write=False) as session:
        found = session.get(Connection, connection_id)
        assert found is not None
        session.expunge(found)
        return found


def sessions(app: Flask, user_id: uuid.UUID) -> list[BrowserSession]:
    """Return a user's browser sessions as stored now."""
    with get_db(app).transaction(write=False) as session:
        rows = list(session.scalars(select(BrowserSession).where(
            BrowserSession.user_id == user_id)))
        session.expunge_all()
        return rows


def events(app: Flask) -> list[SecurityEvent]:
    """Return every recorded security event, oldest first."""
    with get_db(app).transaction(write=False) as session:
        rows = list(session.scalars(select(SecurityEvent).order_by(SecurityEvent.received_at)))
        session.expunge_all()
        return rows


def audited(app: Flask, action: str) -> list[AuditEvent]:
    """Return the audit rows of one action, in insertion order."""
    with get_db(app).transaction(write=False) as session:
        rows = list(session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))
        session.expunge_all()
        return rows


def deliveries(app: Flask, event: str) -> list[WebhookDelivery]:
    """Return the queued webhook deliveries of one event."""
    with get_db(app).transaction(write=False) as session:
        rows = list(session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event == event)))
        session.expunge_all()
        return rows
