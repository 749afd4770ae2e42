"""Gmail's REST surface at Google's paths: profile, messages, threads, labels, history, send."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, request

from broker.emulator import mime
from broker.emulator.context import get_emulator, issuer, json_response, only_in_emulator
from broker.emulator.gmailcalls import Call, gmail_method, register_hooks
from broker.emulator.mailbox import (
    MAX_MESSAGE_BYTES,
    SYSTEM_LABELS,
    Mailbox,
    MailError,
    Message,
    Upload,
    not_found,
)
from broker.emulator.state import Account

bp = Blueprint("emulator_gmail", __name__)
bp.record_once(only_in_emulator)
register_hooks(bp)

USERS = "/gmail/v1/users/<user_id>"
UPLOAD = "/upload/gmail/v1/users/<user_id>/messages/send"
RAW_REQUIRED = (
    "'raw' RFC822 payload message string or uploading message via /upload/* URL required"
)
# A JSON body carries the message in base64, a third larger than the message itself.
MAX_JSON_BYTES = MAX_MESSAGE_BYTES * 4 // 3 + 65_536
RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _int_arg(name: str, default: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise MailError(400, f"Invalid value at '{name}' (TYPE_UINT32), \"{raw[:40]}\"")
    return max(1, min(int(raw), high))


def _bool_arg(name: str) -> bool:
    return request.args.get(name, "false").lower() == "true"


def _format(call: Call, allowed: tuple[str, ...]) -> str:
    fmt = request.args.get("format", "full").lower()
    if fmt not in allowed:
        raise MailError(400, f"Invalid value at 'format', \"{fmt[:40]}\"")
    if call.metadata_only and fmt in ("full", "raw"):
        raise MailError(403, f"Metadata scope doesn't allow format {fmt.upper()}", "forbidden")
    return fmt


def _read_body(limit: int) -> bytes:
    """Read the request body, refusing one larger than `limit` without reading it all."""
    if (request.content_length or 0) > limit:
        raise MailError(413, "Request Too Large.", "uploadTooLarge")
    # A chunked body's stream answers one chunk per read: read until it ends.
    data = bytearray()
    while chunk := request.stream.read(min(1 << 20, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise MailError(413, "Request Too Large.", "uploadTooLarge")
    return bytes(data)


def _json_object(data: bytes) -> dict[str, Any]:
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise MailError(400, "Invalid JSON payload received.")
    return body


def _labels(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MailError(400, f"Invalid value at '{key}'")
    return value


def _mailbox(call: Call) -> Mailbox:
    return call.mail.mailbox(call.account)


def _find(address: str) -> Account | None:
    return get_emulator().state.account_by_email(address)


def _streamed(prefix: dict[str, Any], key: str, chunks: Iterator[bytes], size: int,
              suffix: dict[str, Any]) -> Response:  # fmt: skip
    """Answer JSON whose `key` is the base64url of `size` streamed bytes, never built whole."""
    head = json.dumps(prefix)[:-1] + f', "{key}": "'
    tail = '"' + (", " + json.dumps(suffix)[1:] if suffix else "}") + "\n"
    length = len(head) + mime.b64url_length(size) + len(tail)

    def body() -> Iterator[bytes]:
        yield head.encode()
        yield from mime.b64url_stream(chunks)
        yield tail.encode()

    return Response(body(), mimetype="application/json", headers={"Content-Length": str(length)})


@bp.get(f"{USERS}/profile")
@gmail_method("gmail.users.getProfile")
def profile(call: Call) -> Response:
    """Return the mailbox's address, totals and current history id."""
    with call.mail.lock:
        return json_response(_mailbox(call).profile())


@bp.get(f"{USERS}/labels")
@gmail_method("gmail.users.labels.list")
def labels(call: Call) -> Response:
    """List the system labels and the mailbox's own."""
    with call.mail.lock:
        own = dict(_mailbox(call).labels)
    found: list[dict[str, str]] = [{"id": x, "name": x, "type": "system"} for x in SYSTEM_LABELS]
    found += [
        {"id": label_id, "name": name, "messageListVisibility": "show",
         "labelListVisibility": "labelShow", "type": "user"}
        for label_id, name in own.items()
    ]  # fmt: skip
    return json_response({"labels": found})


def _selection(call: Call) -> tuple[list[str], str | None, bool]:
    q = request.args.get("q")
    if q and call.metadata_only:
        raise MailError(403, "Metadata scope does not support 'q' parameter", "forbidden")
    return request.args.getlist("labelIds"), q, _bool_arg("includeSpamTrash")


@bp.get(f"{USERS}/messages")
@gmail_method("gmail.users.messages.list")
def list_messages(call: Call) -> Response:
    """List message ids, newest first, filtered by labels and a tiny subset of `q`."""
    selection, size = _selection(call), _int_arg("maxResults", 100, 500)
    with call.mail.lock:
        box = _mailbox(call)
        answer = box.list_messages(box.select(*selection), size, request.args.get("pageToken"))
    return json_response(answer)


@bp.get(f"{USERS}/messages/<message_id>")
@gmail_method("gmail.users.messages.get")
def get_message(call: Call, message_id: str) -> Response:
    """Return a message as full, metadata, minimal or (streamed) raw."""
    fmt = _format(call, ("full", "metadata", "minimal", "raw"))
    with call.mail.lock:
        message = _mailbox(call).get(message_id)
        if fmt != "raw":
            return json_response(message.resource(fmt, request.args.getlist("metadataHeaders")))
        prefix = {**message.labelled(), "snippet": message.snippet,
                  "sizeEstimate": message.size_estimate}  # fmt: skip
        suffix = {"historyId": str(message.history_id),
                  "internalDate": str(message.internal_date)}  # fmt: skip
    return _streamed(prefix, "raw", message.raw_chunks(), message.size_estimate, suffix)


@bp.get(f"{USERS}/messages/<message_id>/attachments/<attachment_id>")
@gmail_method("gmail.users.messages.attachments.get")
def get_attachment(call: Call, message_id: str, attachment_id: str) -> Response:
    """Return an attachment's bytes; a generated one is streamed, never held whole."""
    with call.mail.lock:
        message = _mailbox(call).get(message_id)
    where = mime.parse_attachment_id(attachment_id)
    if where is None or where[0] != message_id:
        raise MailError(400, "Invalid attachment token")
    generated = message.generated
    if generated is not None and generated.part_id == where[1]:
        prefix = {"attachmentId": attachment_id, "size": generated.size}
        return _streamed(prefix, "data", generated.chunks(), generated.size, {})
    part = mime.find_part(message.parsed(), where[1])
    if part is None or part.is_multipart():
        raise MailError(400, "Invalid attachment token")
    data = mime.part_bytes(part)
    return json_response({"attachmentId": attachment_id, "size": len(data),
                          "data": mime.b64url(data)})  # fmt: skip


@bp.post(f"{USERS}/messages/<message_id>/modify")
@gmail_method("gmail.users.messages.modify")
def modify(call: Call, message_id: str) -> Response:
    """Add and remove labels; answer the message's id, thread and labels."""
    body = _json_object(_read_body(65_536))
    add, remove = _labels(body, "addLabelIds"), _labels(body, "removeLabelIds")
    with call.mail.lock:
        return json_response(_mailbox(call).modify(message_id, add, remove).labelled())


@bp.get(f"{USERS}/threads")
@gmail_method("gmail.users.threads.list")
def list_threads(call: Call) -> Response:
    """List threads by latest activity, filtered like messages.list."""
    selection, size = _selection(call), _int_arg("maxResults", 100, 500)
    with call.mail.lock:
        box = _mailbox(call)
        answer = box.list_threads(box.select(*selection), size, request.args.get("pageToken"))
    return json_response(answer)


@bp.get(f"{USERS}/threads/<thread_id>")
@gmail_method("gmail.users.threads.get")
def get_thread(call: Call, thread_id: str) -> Response:
    """Return a thread's messages, oldest first, in format full, metadata or minimal."""
    fmt = _format(call, ("full", "metadata", "minimal"))
    headers = request.args.getlist("metadataHeaders")
    with call.mail.lock:
        messages: list[Message] = _mailbox(call).thread(thread_id)
        found = [m.resource(fmt, headers) for m in messages]
    latest = max(int(m["historyId"]) for m in found)
    return json_response({"id": thread_id, "historyId": str(latest), "messages": found})


@bp.get(f"{USERS}/history")
@gmail_method("gmail.users.history.list")
def history(call: Call) -> Response:
    """List changes after `startHistoryId`; 404 when it is older than the history kept."""
    start = request.args.get("startHistoryId")
    if start is None:
        raise MailError(400, "Missing required parameter: startHistoryId")
    if not start.isdigit():
        raise MailError(400, f"Invalid value at 'start_history_id' (TYPE_UINT64), \"{start[:40]}\"")
    size = _int_arg("maxResults", 100, 500)
    kinds = request.args.getlist("historyTypes")
    with call.mail.lock:
        answer = _mailbox(call).changes(
            int(start), size, request.args.get("pageToken"), kinds, request.args.get("labelId")
        )
    return json_response(answer)


def _sent(account: Account, raw: bytes, thread_id: Any) -> Response:
    if not raw.strip():
        raise MailError(400, RAW_REQUIRED)
    store = get_emulator().gmail.mail
    message = store.send(account, raw, thread_id if isinstance(thread_id, str) else None, _find)
    with store.lock:
        return json_response(message.labelled())


def _check_media_type(media_type: str) -> None:
    if not media_type.lower().startswith("message/"):
        raise MailError(
            400, f"Media type '{media_type[:80]}' is not supported. Valid media types: [message/*]"
        )


@bp.post(f"{USERS}/messages/send")
@gmail_method("gmail.users.messages.send")
def send(call: Call) -> Response:
    """Send `{"raw": base64url RFC 822, "threadId"?}`."""
    body = _json_object(_read_body(MAX_JSON_BYTES))
    raw = body.get("raw")
    data = mime.b64url_decode(raw) if isinstance(raw, str) and raw else None
    if data is None:
        raise MailError(400, RAW_REQUIRED)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MailError(413, "Request Too Large.", "uploadTooLarge")
    return _sent(call.account, data, body.get("threadId"))


@bp.post(UPLOAD)
@gmail_method("gmail.users.messages.send")
def upload(call: Call) -> Response:
    """Send by media upload: simple, multipart/related, or start a resumable one."""
    kind = request.args.get("uploadType")
    if kind == "media":
        _check_media_type(request.mimetype)
        return _sent(call.account, _read_body(MAX_MESSAGE_BYTES), None)
    if kind == "multipart":
        content_type = request.headers.get("Content-Type", "")
        parts = mime.split_related(content_type, _read_body(MAX_MESSAGE_BYTES + 65_536))
        if not parts or len(parts) != 2:
            raise MailError(400, "Multipart upload needs a metadata part and a media part")
        metadata = _json_object(parts[0][1])
        _check_media_type(parts[1][0].get_content_type())
        return _sent(call.account, parts[1][1], metadata.get("threadId"))
    if kind == "resumable":
        metadata = _json_object(_read_body(65_536))
        announced = request.headers.get("X-Upload-Content-Length", "")
        total = int(announced) if announced.isdigit() else None
        if total is not None and total > MAX_MESSAGE_BYTES:
            raise MailError(413, "Request Too Large.", "uploadTooLarge")
        if request.headers.get("X-Upload-Content-Type"):
            _check_media_type(request.headers["X-Upload-Content-Type"])
        thread_id = metadata.get("threadId")
        upload_id = secrets.token_urlsafe(32)
        with call.mail.lock:
            call.mail.uploads[upload_id] = Upload(
                call.account.sub, thread_id if isinstance(thread_id, str) else None, total
            )
        location = f"{issuer()}{quote(request.path)}?uploadType=resumable&upload_id={upload_id}"
        headers = {"Location": location, "X-GUploader-UploadID": upload_id}
        return Response(b"", status=200, headers=headers)
    raise MailError(400, "Invalid uploadType: use media, multipart or resumable")


@bp.put(UPLOAD)
@gmail_method("gmail.users.messages.send", authenticate=False)
def upload_bytes(call: None) -> Response:
    """Take (part of) a resumable upload's bytes; the last part sends the message.

    As at Google, the `upload_id` is what authorizes the upload's later requests.
    """
    store = get_emulator().gmail.mail
    upload_id = request.args.get("upload_id", "")
    with store.lock:
        session = store.uploads.get(upload_id)
    if session is None or request.args.get("uploadType") != "resumable":
        raise not_found()
    match = RANGE.fullmatch(request.headers.get("Content-Range", "").strip())
    start = int(match.group(1)) if match and match.group(1) else len(session.data)
    total = int(match.group(3)) if match and match.group(3) != "*" else session.total
    data = _read_body(MAX_MESSAGE_BYTES - len(session.data))
    with store.lock:
        if start == len(session.data):
            session.data += data
        if total is None and not match:
            total = len(session.data)
        if total is None or len(session.data) < total:
            done = len(session.data)
            headers = {"Range": f"bytes=0-{done - 1}"} if done else {}
            return Response(b"", status=308, headers=headers)
        store.uploads.pop(upload_id, None)
    state = get_emulator().state
    with state.lock:
        account = state.accounts.get(session.sub)
    if account is None:
        raise not_found()
    return _sent(account, bytes(session.data), session.thread_id)
