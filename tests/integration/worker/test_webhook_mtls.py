"""Two-way TLS on webhooks: a receiver that demands a client certificate gets the delivery."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from broker import webhooks
from broker.db import get_db
from broker.emulator.pki import issue
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.models import AuditEvent, Webhook, WebhookDelivery
from tests.integration.api.test_mtls import _client_leaf
from tests.plugins.emulator import EmulatorControls
from tests.plugins.world import World, broker_config


class TlsReceiver:
    """An HTTPS endpoint on loopback that requires a client certificate of one CA."""

    def __init__(self, server_chain: Path, server_key: Path, client_ca: Path) -> None:
        self.peers: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                outer.peers.append(dict(x[0] for x in peer["subject"])["commonName"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server_chain, server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The receiver's server chain, the CA it trusts for clients, and the broker's client cert."""
    root = issue("hooks root", ca=True)
    leaf = issue("127.0.0.1", issuer=root, hosts=("127.0.0.1",))
    client_ca = issue("hooks client CA", ca=True)
    client = _client_leaf(client_ca, cn="broker")
    stranger = _client_leaf(issue("other CA", ca=True), cn="stranger")
    out = {}
    for name, data in {"root": root.pem(), "chain": leaf.pem(), "key": leaf.key_pem(),
                       "client_ca": client_ca.pem(), "client": client.pem(),
                       "client_key": client.key_pem(), "stranger": stranger.pem(),
                       "stranger_key": stranger.key_pem()}.items():
        out[name] = tmp_path / f"{name}.pem"
        out[name].write_bytes(data)
    return out


@pytest.fixture
def receiver(files: dict[str, Path]) -> Iterator[TlsReceiver]:
    r = TlsReceiver(files["chain"], files["key"], files["client_ca"])
    yield r
    r.close()


@pytest.fixture
def hooks_app(make_app: Callable[..., Flask], emulator: EmulatorControls,
              files: dict[str, Path]) -> Flask:
    return make_app(**broker_config(emulator, WEBHOOK_ALLOW_PRIVATE=True,
                                    CA_BUNDLE=str(files["root"])))


def _add(world: World, url: str, cert: Path, key: Path) -> Webhook:
    with get_db(world.app).transaction() as session:
        return webhooks.add(session, get_keys(world.app), world.tenant.id, url=url,
                            events=None, allow_private=True, actor="test",
                            client_cert=cert.read_text(), client_key=key.read_bytes()).webhook


def _deliver(world: World) -> str | None:
    emulator = world.emulator
    emulator.revoke_account(world.user.email)
    assert world.token().json["reason"] == "revoked_or_expired"  # enqueues needs_reauth
    assert webhooks.deliver_due(world.app) == 1
    with get_db(world.app).transaction(write=False) as session:
        return session.scalars(select(WebhookDelivery.last_status)).one()


def test_deliveries_present_the_webhooks_certificate(
    hooks_app: Flask, make_world: Callable[..., World], receiver: TlsReceiver,
    files: dict[str, Path],
) -> None:
    world = make_world(app=hooks_app)
    hook = _add(world, receiver.url, files["client"], files["client_key"])
    assert _deliver(world) == "204"
    assert receiver.peers == ["broker"]
    with get_db(hooks_app).transaction(write=False) as session:
        stored = session.get(Webhook, hook.id)
        assert stored is not None and stored.client_key is not None
        assert b"PRIVATE KEY" not in stored.client_key  # sealed, not stored in clear
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook.create")).one()
        assert len(event.details["cert_sha256"]) == 64


def test_a_certificate_the_receiver_does_not_trust_fails_the_delivery(
    hooks_app: Flask, make_world: Callable[..., World], receiver: TlsReceiver,
    files: dict[str, Path],
) -> None:
    world = make_world(app=hooks_app)
    _add(world, receiver.url, files["stranger"], files["stranger_key"])
    status = _deliver(world)
    assert status is not None and status.startswith("error:") and receiver.peers == []


def test_registration_checks_the_certificate(
    hooks_app: Flask, make_world: Callable[..., World], receiver: TlsReceiver,
    files: dict[str, Path], tmp_path: Path,
) -> None:
    world = make_world(app=hooks_app)
    with pytest.raises(InvalidRequest, match="key does not match"):
        _add(world, receiver.url, files["client"], files["stranger_key"])
    with pytest.raises(InvalidRequest, match="needs an https:// webhook URL"):
        _add(world, receiver.url.replace("https", "http"), files["client"],
             files["client_key"])
    expired = _client_leaf(issue("hooks client CA", ca=True), cn="old",
                           start=dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
    (tmp_path / "old.pem").write_bytes(expired.pem())
    (tmp_path / "old-key.pem").write_bytes(expired.key_pem())
    with pytest.raises(InvalidRequest, match="has expired"):
        _add(world, receiver.url, tmp_path / "old.pem", tmp_path / "old-key.pem")
