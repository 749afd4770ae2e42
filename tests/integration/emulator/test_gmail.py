"""Gmail's message surface at the emulator, driven by google-api-python-client over real HTTP."""

from __future__ import annotations

import base64
import email
import http.client
import io
import json
import threading
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from tests.integration.emulator.support import GMAIL_READONLY, GMAIL_SEND, OAuthClient
from tests.plugins.emulator import EmulatorControls

ALICE, BOB = "alice@acme.test", "bob@acme.test"
MAIL = "https://mail.google.com/"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"
METADATA = "https://www.googleapis.com/auth/gmail.metadata"
Gmail = Callable[..., Any]


def _token(emulator: EmulatorControls, *scopes: str, who: str = ALICE) -> str:
    return str(emulator.grant(who, OAuthClient().client_id, list(scopes))["access_token"])


@pytest.fixture
def gmail(emulator: EmulatorControls, oauth_client: OAuthClient) -> Gmail:
    """Build a Gmail client for alice (or another account) holding the given scopes."""
    emulator.add_account(ALICE)
    emulator.add_account(BOB)

    def make(*scopes: str, who: str = ALICE) -> Any:
        return build(
            "gmail",
            "v1",
            credentials=Credentials(_token(emulator, *scopes, who=who)),
            client_options={"api_endpoint": emulator.url + "/"},
            static_discovery=True,
        ).users()

    return make


def _error(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HttpError) as caught:
        call.execute()
    return caught.value.status_code, json.loads(caught.value.content)["error"]


def _message(subject: str, to: str = BOB, attachment: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["To"], message["From"], message["Subject"] = to, ALICE, subject
    message.set_content(f"Body of {subject}.")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf",
                               filename="a.pdf")  # fmt: skip
    return message


def test_read_the_default_mailbox(gmail: Gmail) -> None:
    users = gmail(GMAIL_READONLY)
    profile = users.getProfile(userId="me").execute()
    assert profile == {"emailAddress": ALICE, "messagesTotal": 123, "threadsTotal": 45,
                       "historyId": "6789"}  # fmt: skip
    first = users.messages().list(userId="me", maxResults=100).execute()
    second = users.messages().list(userId="me", pageToken=first["nextPageToken"]).execute()
    ids = [m["id"] for m in first["messages"] + second["messages"]]
    assert len(set(ids)) == 123 and "nextPageToken" not in second
    inbox = users.messages().list(userId=ALICE, labelIds=["INBOX", "UNREAD"]).execute()
    assert 0 < inbox["resultSizeEstimate"] < 123

    newest = ids[0]  # the default mailbox's newest message carries an attachment
    full = users.messages().get(userId="me", id=newest).execute()
    assert list(full) == ["id", "threadId", "labelIds", "snippet", "payload", "sizeEstimate",
                          "historyId", "internalDate"]  # fmt: skip
    text, attached = full["payload"]["parts"]
    assert full["payload"]["mimeType"] == "multipart/mixed"
    assert base64.urlsafe_b64decode(text["body"]["data"]).decode().startswith(full["snippet"])
    assert attached["filename"].endswith(".bin") and attached["body"]["size"] == 2048
    got = users.messages().attachments().get(
        userId="me", messageId=newest, id=attached["body"]["attachmentId"]
    ).execute()
    assert got["size"] == 2048 and len(base64.urlsafe_b64decode(got["data"])) == 2048

    meta = users.messages().get(userId="me", id=newest, format="metadata",
                                metadataHeaders=["Subject", "From"]).execute()  # fmt: skip
    assert {h["name"] for h in meta["payload"]["headers"]} == {"Subject", "From"}
    minimal = users.messages().get(userId="me", id=newest, format="minimal").execute()
    assert "payload" not in minimal and minimal["sizeEstimate"] == full["sizeEstimate"]
    raw = users.messages().get(userId="me", id=newest, format="raw").execute()
    parsed = email.message_from_bytes(base64.urlsafe_b64decode(raw["raw"]))
    assert len(base64.urlsafe_b64decode(raw["raw"])) == raw["sizeEstimate"]
    assert parsed.get_payload()[1].get_payload(decode=True) == base64.urlsafe_b64decode(got["data"])

    threads = users.threads().list(userId="me").execute()
    assert threads["resultSizeEstimate"] == 45
    thread = users.threads().get(userId="me", id=full["threadId"], format="minimal").execute()
    assert thread["messages"][-1]["id"] == newest
    labels = {label["id"] for label in users.labels().list(userId="me").execute()["labels"]}
    assert {"INBOX", "SENT", "UNREAD", "Label_1"} <= labels
    with pytest.raises(HttpError) as unknown:
        users.messages().get(userId="me", id="ffffffffffffffff").execute()
    assert unknown.value.status_code == 404


def test_send_raw_simple_multipart_and_resumable(
    gmail: Gmail, emulator: EmulatorControls
) -> None:
    alice = gmail(GMAIL_SEND)
    reader = gmail(GMAIL_READONLY, who=BOB)
    start = reader.getProfile(userId="me").execute()["historyId"]
    raw = base64.urlsafe_b64encode(_message("raw").as_bytes()).decode()
    sent = [alice.messages().send(userId="me", body={"raw": raw}).execute()]
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 1200  # 300 KB: two resumable chunks of 256 KiB
    for subject, body, resumable in (
        ("simple", None, False), ("multipart", {}, False), ("resumable", None, True),
    ):  # fmt: skip
        media = MediaIoBaseUpload(
            io.BytesIO(_message(subject, attachment=pdf).as_bytes()),
            mimetype="message/rfc822", resumable=resumable, chunksize=256 * 1024,
        )  # fmt: skip
        request = alice.messages().send(userId="me", body=body, media_body=media)
        # googleapiclient swaps only the host of an overridden endpoint into upload URLs and
        # keeps Google's https (google-api-python-client PR 1992): put the emulator's back.
        assert request.uri.startswith(emulator.url.replace("http:", "https:") + "/upload/gmail/")
        request.uri = request.uri.replace("https:", "http:", 1)
        sent.append(request.execute())
    blind = _message("chunked", attachment=pdf)
    blind["Bcc"] = "carol@elsewhere.test"
    whole = blind.as_bytes()
    chunked = httpx.post(  # a streaming sender (a proxy) sends chunked bodies
        f"{emulator.url}/upload/gmail/v1/users/me/messages/send?uploadType=media",
        content=iter([whole[:70_000], whole[70_000:]]),
        headers={"Authorization": f"Bearer {_token(emulator, GMAIL_SEND)}",
                 "Content-Type": "message/rfc822"},
    )  # fmt: skip
    assert chunked.status_code == 200, chunked.text
    sent.append(chunked.json())
    assert all(m["labelIds"] == ["SENT"] for m in sent)
    uploads = [r for r in emulator.gmail_requests() if r["path"].startswith("/upload/")]
    kinds = [r["query"].split("uploadType=")[-1].split("&")[0] for r in uploads]
    assert kinds == ["media", "multipart", "resumable", "resumable", "resumable", "media"]
    assert uploads[-1]["headers"]["transfer-encoding"] == "chunked"
    assert uploads[-1]["body_length"] == len(whole)

    changes = reader.history().list(userId="me", startHistoryId=start).execute()
    delivered = [c["messagesAdded"][0]["message"] for c in changes["history"]]
    assert [m["labelIds"] for m in delivered] == [["INBOX", "UNREAD"]] * 5
    last = reader.messages().get(userId="me", id=delivered[-1]["id"]).execute()
    bcc = len("Bcc: carol@elsewhere.test\n")
    assert last["sizeEstimate"] == len(whole) - bcc  # as sent, less the Bcc line
    subject = {h["name"]: h["value"] for h in last["payload"]["headers"]}["Subject"]
    part = last["payload"]["parts"][1]
    assert subject == "chunked" and part["filename"] == "a.pdf"
    data = reader.messages().attachments().get(
        userId="me", messageId=last["id"], id=part["body"]["attachmentId"]
    ).execute()["data"]
    assert base64.urlsafe_b64decode(data) == pdf
    own = gmail(GMAIL_READONLY).messages().list(userId="me", labelIds=["SENT"], q="subject:raw")
    assert own.execute()["messages"][0]["id"] == sent[0]["id"]
    status, error = _error(alice.messages().send(userId="me", body={"raw": ""}))
    assert status == 400 and error["message"].startswith("'raw' RFC822 payload")


def test_a_25_mb_attachment_streams(gmail: Gmail, emulator: EmulatorControls) -> None:
    size = 25 * 1024 * 1024
    seeded = emulator.seed_mailbox(ALICE, 3, attachment_bytes=size, seed=7)
    assert seeded["messagesTotal"] == 3
    newest = seeded["messages"][-1]
    token = _token(emulator, GMAIL_READONLY)
    path = f"/gmail/v1/users/me/messages/{newest['id']}/attachments/{newest['attachmentId']}"
    host, port = emulator.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    tracemalloc.start()
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        received, head = 0, answer.read(64)
        while chunk := answer.read(65_536):
            received += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        connection.close()
    assert answer.status == 200 and head.startswith(b'{"attachmentId": "')
    assert received + 64 == int(answer.headers["Content-Length"]) > size * 4 // 3
    # The emulator serves from this very process: had it built the answer whole, the peak
    # would pass 33 MB (the base64 alone). It stays near 0.5 MB; the margin is for the
    # interpreter's own allocations in the same window (about 10 MB under -p no:logging).
    assert peak < 16 * 1024 * 1024, peak


def test_modify_and_history(gmail: Gmail, emulator: EmulatorControls) -> None:
    emulator.seed_mailbox(ALICE, 4, threads=2, history_id=500)
    users = gmail(MODIFY)
    message_id = users.messages().list(userId="me").execute()["messages"][0]["id"]
    changed = users.messages().modify(
        userId="me", id=message_id, body={"addLabelIds": ["STARRED", "Label_2"],
                                          "removeLabelIds": ["INBOX"]},
    ).execute()  # fmt: skip
    assert set(changed) == {"id", "threadId", "labelIds"}
    assert "INBOX" not in changed["labelIds"] and "Label_2" in changed["labelIds"]
    history = users.history().list(userId="me", startHistoryId="500").execute()
    assert history["historyId"] == "502"
    assert [list(h)[-1] for h in history["history"]] == ["labelsAdded", "labelsRemoved"]
    assert history["history"][1]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    only = users.history().list(userId="me", startHistoryId="500",
                                historyTypes=["labelRemoved"]).execute()  # fmt: skip
    assert len(only["history"]) == 1
    assert users.getProfile(userId="me").execute()["historyId"] == "502"
    status, error = _error(users.history().list(userId="me", startHistoryId="499"))
    assert (status, error["status"], error["errors"][0]["reason"]) == (404, "NOT_FOUND", "notFound")
    status, error = _error(users.messages().modify(userId="me", id=message_id,
                                                    body={"addLabelIds": ["Label_9"]}))  # fmt: skip
    assert (status, error["message"]) == (400, "Invalid label: Label_9")


def test_refusals_match_google(gmail: Gmail, emulator: EmulatorControls) -> None:
    status, error = _error(gmail(GMAIL_SEND).messages().list(userId="me"))
    assert status == 403 and error["errors"][0]["reason"] == "insufficientPermissions"
    assert error["status"] == "PERMISSION_DENIED"
    assert error["details"][0]["metadata"]["method"].endswith("MailboxService.ListMessages")
    metadata = gmail(METADATA).messages()
    newest = metadata.list(userId="me").execute()["messages"][0]["id"]
    assert metadata.get(userId="me", id=newest, format="metadata").execute()["id"] == newest
    for fmt in ("full", "raw"):
        status, error = _error(metadata.get(userId="me", id=newest, format=fmt))
        refused = f"Metadata scope doesn't allow format {fmt.upper()}"
        assert (status, error["message"]) == (403, refused)
    status, error = _error(gmail(GMAIL_READONLY).messages().list(userId=BOB))
    assert (status, error["message"]) == (403, f"Delegation denied for {ALICE}")
    token = _token(emulator, GMAIL_READONLY)
    emulator.expire(ALICE)
    answer = httpx.get(f"{emulator.url}/gmail/v1/users/me/messages",
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert answer.status_code == 401
    assert answer.json()["error"]["errors"][0]["reason"] == "authError"


def test_quota_in_gmail_units(gmail: Gmail, emulator: EmulatorControls) -> None:
    emulator.freeze()
    emulator.settings(gmail_user_quota=11, gmail_project_quota=13)
    alice, bob = gmail(GMAIL_READONLY), gmail(GMAIL_READONLY, who=BOB)
    alice.messages().list(userId="me").execute()  # 5 units
    alice.messages().list(userId="me").execute()  # 10
    alice.getProfile(userId="me").execute()  # 11
    status, error = _error(alice.getProfile(userId="me"))
    assert status == 403 and error == {
        "code": 403, "message": "User Rate Limit Exceeded",
        "errors": [{"message": "User Rate Limit Exceeded", "domain": "usageLimits",
                    "reason": "userRateLimitExceeded"}],
    }  # fmt: skip
    bob.getProfile(userId="me").execute()  # the project has spent 12 of 13
    status, error = _error(bob.messages().list(userId="me"))
    assert (status, error["errors"][0]["reason"]) == (403, "rateLimitExceeded")
    emulator.clock(60)  # the next minute
    assert alice.messages().list(userId="me").execute()["resultSizeEstimate"] == 123


def test_concurrency_cap_and_overlapping_slow_calls(
    gmail: Gmail, emulator: EmulatorControls
) -> None:
    users = gmail(GMAIL_READONLY)
    users.getProfile(userId="me").execute()  # the mailbox exists before the calls race
    emulator.settings(gmail_user_concurrency=20)
    emulator.slow_gmail(30_000, count=20)  # clearing the faults ends the wait at once
    token = _token(emulator, GMAIL_READONLY)
    answers: list[int] = []

    host, port = emulator.url.removeprefix("http://").split(":")

    def call() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", "/gmail/v1/users/me/profile",
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        answers.append(connection.getresponse().status)
        connection.close()

    workers = [threading.Thread(target=call) for _ in range(20)]
    for worker in workers:
        worker.start()
    # All 20 hang at once (a lock held while waiting would let only one in).
    for _ in range(10_000):
        if sum(1 for r in emulator.gmail_requests() if r["status"] is None) == 20:
            break
    status, error = _error(users.getProfile(userId="me"))
    assert status == 429 and error["message"] == "Too many concurrent requests for user"
    assert error["errors"][0]["reason"] == "rateLimitExceeded"
    emulator.clear_faults()
    for worker in workers:
        worker.join(timeout=30)
    assert answers == [200] * 20


def test_request_log_and_counters(gmail: Gmail, emulator: EmulatorControls) -> None:
    gmail(GMAIL_READONLY).messages().list(userId="me", maxResults=2).execute()
    token = _token(emulator, GMAIL_READONLY)
    httpx.get(f"{emulator.url}/gmail/v1/users/me/nothing?access_token={token}")
    first, second = emulator.gmail_requests()
    assert first["method"] == "GET" and first["path"] == "/gmail/v1/users/me/messages"
    assert first["query"] == "maxResults=2&alt=json" and first["status"] == 200
    assert first["method_id"] == "gmail.users.messages.list" and first["account"] == ALICE
    assert first["headers"]["authorization"] is None and "x-goog-api-client" in first["headers"]
    assert first["auth_scheme"] == "Bearer" and first["token_scopes"] == [GMAIL_READONLY]
    assert second["status"] == 404 and token not in str(second)
    assert second["query"] == "access_token=REDACTED"
    calls = emulator.calls()
    assert calls["gmail"] == 2
    assert calls["gmail_methods"] == {"gmail.users.messages.list": 1}
    emulator.reset()
    assert emulator.gmail_requests() == [] and emulator.gmail_methods() == {}
