"""Turn RFC 822 bytes into the parts, headers and snippets of Gmail's message resource."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import html
import math
from collections.abc import Iterable, Iterator
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, cast

# One base64 line of RFC 2045 carries 57 bytes; whole lines keep streamed chunks concatenable.
LINE_BYTES = 57
SNIPPET_CHARS = 200
ATTACHMENT_PREFIX = "ANGjdJ"


def b64url(data: bytes) -> str:
    """Encode as Gmail does: URL-safe base64 with padding."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """Decode URL-safe (or standard) base64, padded or not; None when it is not base64."""
    cleaned = text.strip().replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        return None


def b64url_length(size: int) -> int:
    """Return the length of the padded base64 of `size` bytes."""
    return 4 * math.ceil(size / 3)


def b64url_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Base64url-encode a stream of bytes without holding it whole."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        whole = len(data) - len(data) % 3
        carry = data[whole:]
        if whole:
            yield base64.urlsafe_b64encode(data[:whole])
    if carry:
        yield base64.urlsafe_b64encode(carry)


def mime_base64_length(size: int) -> int:
    """Return the length of `size` bytes as MIME base64: 76-character lines ending in CRLF."""
    encoded = b64url_length(size)
    return encoded + 2 * math.ceil(encoded / 76)


def attachment_id(message_id: str, part_id: str) -> str:
    """Name one part of one message, opaquely, as Gmail's attachment ids do."""
    token = base64.urlsafe_b64encode(f"{message_id}:{part_id}".encode()).decode().rstrip("=")
    return ATTACHMENT_PREFIX + token


def parse_attachment_id(value: str) -> tuple[str, str] | None:
    """Return (message id, part id) of an attachment id, or None if it is not one of ours."""
    if not value.startswith(ATTACHMENT_PREFIX):
        return None
    decoded = b64url_decode(value[len(ATTACHMENT_PREFIX) :])
    try:
        message_id, sep, part_id = (decoded or b"").decode("ascii").partition(":")
    except UnicodeDecodeError:
        return None
    return (message_id, part_id) if sep else None


def parse(raw: bytes) -> Message:
    """Parse a message with the modern policy (decoded, unfolded header values)."""
    return email.message_from_bytes(raw, policy=email.policy.default)


def headers(part: Message, only: Iterable[str] | None = None) -> list[dict[str, str]]:
    """Return a part's headers as Gmail lists them, optionally only the named ones."""
    wanted = {name.lower() for name in only} if only is not None else None
    found = []
    for name, value in part.raw_items():
        if wanted is not None and name.lower() not in wanted:
            continue
        try:
            text = str(part.policy.header_fetch_parse(name, value))
        except Exception:  # noqa: BLE001 - a malformed header is shown raw, as Gmail does
            text = " ".join(str(value).split())
        found.append({"name": name, "value": text})
    return found


def payload(
    part: Message, message_id: str, generated: tuple[str, int] | None = None, part_id: str = ""
) -> dict[str, Any]:
    """Describe a part (and its children) as Gmail's `payload`; attachments get an id, no data.

    `generated` names a part whose bytes are made on demand, and its size.
    """
    entry: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": headers(part),
    }
    if part.is_multipart():
        children = part.get_payload()
        entry["body"] = {"size": 0}
        entry["parts"] = [
            payload(child, message_id, generated, f"{part_id}.{i}" if part_id else str(i))
            for i, child in enumerate(children)
        ]
        return entry
    if generated is not None and generated[0] == part_id:
        entry["body"] = {"attachmentId": attachment_id(message_id, part_id), "size": generated[1]}
        return entry
    data = part_bytes(part)
    if entry["filename"]:
        entry["body"] = {"attachmentId": attachment_id(message_id, part_id), "size": len(data)}
    else:
        entry["body"] = {"size": len(data), **({"data": b64url(data)} if data else {})}
    return entry


def part_bytes(part: Message) -> bytes:
    """Return a leaf part's decoded content."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def find_part(message: Message, part_id: str) -> Message | None:
    """Return the part with this Gmail part id."""
    node = message
    for step in part_id.split(".") if part_id else []:
        children = node.get_payload() if node.is_multipart() else None
        if not isinstance(children, list) or not step.isdigit() or int(step) >= len(children):
            return None
        node = cast(Message, children[int(step)])
    return node


def snippet(message: Message) -> str:
    """Return the first words of the text body, HTML-escaped, as Gmail's `snippet`."""
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html") and not part.get_filename():
            text = _decode(part_bytes(part), part.get_content_charset())
            if part.get_content_type() == "text/html":
                text = html.unescape(_strip_tags(text))
            words = " ".join(text.split())[:SNIPPET_CHARS]
            return html.escape(words).replace("&#x27;", "&#39;")
    return ""


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know: read it as UTF-8, as a mail reader would
        return data.decode("utf-8", "replace")


def header(message: Message, name: str) -> str:
    """Return one header's values joined, decoded where possible, raw where malformed."""
    values = [item for item in headers(message, [name])]
    return ", ".join(item["value"] for item in values)


def _strip_tags(text: str) -> str:
    out, inside = [], False
    for char in text:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
            out.append(" ")
        elif not inside:
            out.append(char)
    return "".join(out)


def split_related(content_type: str, body: bytes) -> list[tuple[Message, bytes]] | None:
    """Split a multipart/related upload into (headers, content) pairs; None if it is not one."""
    holder = Message()
    holder["Content-Type"] = content_type
    boundary = holder.get_boundary()
    if holder.get_content_type() != "multipart/related" or not boundary:
        return None
    parts = []
    for piece in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if piece.startswith(b"--"):
            break
        piece = piece.partition(b"\n")[2]  # the rest of the boundary line
        if piece.startswith((b"\r\n", b"\n")):
            head, content = b"", piece.partition(b"\n")[2]
        else:
            ends = [(piece.find(blank), blank) for blank in (b"\r\n\r\n", b"\n\n")]
            found = [(at, blank) for at, blank in ends if at >= 0]
            if not found:
                return None
            at, blank = min(found)
            head, content = piece[:at], piece[at + len(blank) :]
        content = content.removesuffix(b"\n").removesuffix(b"\r")
        parsed = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        if (parsed.get("Content-Transfer-Encoding") or "").lower() == "base64":
            try:
                content = base64.b64decode(content)
            except (binascii.Error, ValueError):
                return None
        parts.append((parsed, content))
    return parts
