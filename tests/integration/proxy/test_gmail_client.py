"""Issue 13's "done when": a job with only the SDK and google-api-python-client lists, reads,
sends (with an attachment) and modifies alice's mail through a broker served over real HTTP,
holding no Google token; and bodies stream both ways."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from flask import Flask
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from werkzeug.serving import make_server

from broker.client import BrokerClient
from broker.db import get_db
from broker.tenancy import clients
from tests.plugins.world import MODIFY, READONLY, SEND, World, broker_config

ALL = [READONLY, SEND, MODIFY]


@pytest.fixture
def served() -> Iterator[Callable[[Flask], str]]:
    """Serve broker apps over real HTTP on loopback; return their base URLs."""
    servers: list[Any] = []

    def serve(app: Flask) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _gmail(world: World, url: str) -> tuple[Any, Any]:
    broker = BrokerClient(url, world.client_id, world.client_secret)
    creds = broker.proxy_credentials(world.user.email)
    service = build("gmail", "v1", credentials=creds, static_discovery=True,
                    client_options={"api_endpoint": creds.proxy_url})
    return service.users(), creds


def _raw_with_attachment(sender: str) -> str:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, sender, "Report"
    message.set_content("The report is attached.")
    message.add_attachment(b"col1,col2\n1,2\n", maintype="text", subtype="csv",
                           filename="report.csv")
    return base64.urlsafe_b64encode(message.as_bytes()).decode()


def test_a_job_uses_gmail_through_the_broker_without_a_google_token(
    make_world: Callable[..., World], served: Callable[[Flask], str]
) -> None:
    world = make_world(granted=ALL, allowed=ALL)
    users, creds = _gmail(world, served(world.app))
    listed = users.messages().list(userId="me", maxResults=5).execute()
    first = listed["messages"][0]["id"]
    full = users.messages().get(userId="me", id=first, format="full").execute()
    assert full["id"] == first and full["payload"]["headers"]
    sent = users.messages().send(
        userId="me", body={"raw": _raw_with_attachment(world.user.email)}).execute()
    modified = users.messages().modify(
        userId="me", id=sent["id"], body={"addLabelIds": ["STARRED"]}).execute()
    assert "STARRED" in modified["labelIds"]
    again = users.messages().get(userId="me", id=sent["id"], format="full").execute()
    parts = [p.get("filename") for p in again["payload"].get("parts", [])]
    assert "report.csv" in parts

    # What the job holds is no Google token: Google's tokeninfo refuses it.
    assert creds.token.startswith("bpt1.")
    info = httpx.get(world.emulator.url + "/tokeninfo", params={"access_token": creds.token})
    assert info.status_code == 400 and info.json()["error"] == "invalid_token"
    methods = world.emulator.gmail_methods()
    assert methods["gmail.users.messages.send"] == 1
    assert methods["gmail.users.messages.modify"] == 1


def test_a_client_allowed_list_only_is_refused_get(
    make_world: Callable[..., World], served: Callable[[Flask], str]
) -> None:
    world = make_world(granted=ALL, allowed=ALL)
    with get_db(world.app).transaction() as session:
        clients.set_methods(session, world.client_id, ["gmail.users.messages.list"])
    users, _ = _gmail(world, served(world.app))
    first = users.messages().list(userId="me").execute()["messages"][0]["id"]
    with pytest.raises(HttpError) as refused:
        users.messages().get(userId="me", id=first).execute()
    assert refused.value.status_code == 403
    assert b'"method_not_allowed"' in refused.value.content
    assert b"gmail.users.messages.get" in refused.value.content
    assert "gmail.users.messages.get" not in world.emulator.gmail_methods()


def test_bodies_stream_both_ways(
    make_world: Callable[..., World], served: Callable[[Flask], str]
) -> None:
    world = make_world(granted=ALL, allowed=ALL)
    seeded = world.emulator.seed_mailbox(world.user.email, 3, attachment_bytes=3_000_000)
    newest = seeded["messages"][-1]
    api = world.app.test_client()
    auth = {"Authorization": world.auth}
    base = f"/proxy/gmail/v1/users/{world.user.email}/messages"
    attachment = api.get(f"{base}/{newest['id']}/attachments/{newest['attachmentId']}",
                         headers=auth, buffered=True)
    assert attachment.status_code == 200
    assert attachment.json["size"] == 3_000_000

    raw = _raw_with_attachment(world.user.email).encode()
    big = base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/") + b"==")
    body = big + b"\r\n" + b"x" * 2_000_000  # over 1 MiB: streamed, not kept for a resend

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65_536):
            yield body[start:start + 65_536]

    uploaded = httpx.post(  # chunked: the broker streams it on, never holding it whole
        served(world.app) + f"/upload/gmail/v1/users/{world.user.email}/messages/send",
        params={"uploadType": "media"}, content=chunks(),
        headers={**auth, "Content-Type": "message/rfc822", "Cookie": "session=x"}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text[:300]
    assert uploaded.json()["labelIds"][0] == "SENT"
    last = world.emulator.gmail_requests()[-1]
    assert last["body_length"] == len(body) and "authorization" in last["headers"]
    assert "cookie" not in last["headers"]


def test_a_large_upload_gmail_refused_for_its_token_is_refreshed_and_sent_again(
    make_world: Callable[..., World], make_app: Callable[..., Flask],
    served: Callable[[Flask], str], emulator: Any,
) -> None:
    # One turn per process: a call that must refresh and audit at once must not wait on itself.
    app = make_app(**broker_config(emulator, PROXY_TURNS=1, REJECTED_TOKEN_COOLDOWN=0))
    world = make_world(granted=ALL, allowed=ALL, app=app)
    url = served(app) + f"/upload/gmail/v1/users/{world.user.email}/messages/send"
    auth = {"Authorization": world.auth, "Content-Type": "message/rfc822"}
    body = (f"From: {world.user.email}\r\nTo: {world.user.email}\r\nSubject: big\r\n\r\n"
            ).encode() + b"x" * 1_500_000

    def send() -> httpx.Response:
        chunks = (body[i:i + 65_536] for i in range(0, len(body), 65_536))
        return httpx.post(url, params={"uploadType": "media"}, content=chunks, headers=auth,
                          timeout=30)

    assert send().status_code == 200
    emulator.expire(world.user.email)  # Gmail now answers 401 to the stored token
    refused = send()  # streamed, so not kept: refreshed, and the job is told to send again
    assert refused.status_code == 503 and refused.json()["error"] == "upstream_unavailable"
    assert send().status_code == 200
