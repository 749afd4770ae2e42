"""Every account's mailbox: the default one generated from its figures, seeded ones, sends."""

from __future__ import annotations

import html
import random
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any

from broker.emulator import mime
from broker.emulator.mailbox import Generated, Mailbox, MailError, Message, Upload
from broker.emulator.state import Account

DEFAULT_ATTACHMENT_BYTES = 2048
ID_BASE = 0x18C0_0000_0000_0000  # ids look like Gmail's 16 hex digits
SENDERS = (
    ("Ada Lovelace", "ada@analytical.test"), ("Grace Hopper", "grace@cobol.test"),
    ("Alan Turing", "alan@bletchley.test"), ("Billing", "billing@shop.test"),
    ("Team Calendar", "calendar@acme.test"),
)  # fmt: skip
TOPICS = ("Quarterly report", "Lunch on Friday", "Your invoice", "Trip to Lisbon",
          "Design review", "Release notes", "Welcome aboard", "Password policy")  # fmt: skip
WORDS = (
    "please", "find", "the", "numbers", "attached", "we", "agreed", "on", "Tuesday", "thanks",
    "again", "for", "your", "help", "let", "me", "know", "what", "you", "think",
)  # fmt: skip


def _generated_message(
    rng: random.Random, address: str, message_id: str, thread_id: str, topic: str, reply: bool,
    when: int, attachment: int | None, seed: int,
) -> Message:  # fmt: skip
    name, sender = rng.choice(SENDERS)
    subject = f"Re: {topic}" if reply else topic
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 60))).capitalize() + "."
    date = format_datetime(datetime.fromtimestamp(when / 1000, UTC))
    common = (
        f"From: {name} <{sender}>\r\nTo: {address}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{message_id}@mail.emulator.test>\r\nMIME-Version: 1.0\r\n"
    )
    plain = 'Content-Type: text/plain; charset="UTF-8"\r\n'
    fields: dict[str, Any] = {"subject": subject, "sender": f"{name} <{sender}>"}
    snippet = html.escape(text[: mime.SNIPPET_CHARS]).replace("&#x27;", "&#39;")
    base: dict[str, Any] = {"id": message_id, "thread_id": thread_id}
    base.update(label_ids=[], history_id=0)
    if attachment is None:
        head = f"{common}{plain}\r\n{text}\r\n".encode()
        return Message(**base, internal_date=when, head=head, snippet=snippet, **fields)
    boundary = f"b_{message_id}"
    filename = f"report-{message_id[-4:]}.bin"
    head = (
        f'{common}Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n{plain}\r\n{text}\r\n--{boundary}\r\n"
        f'Content-Type: application/octet-stream; name="{filename}"\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        f"Content-Transfer-Encoding: base64\r\nX-Attachment-Id: f_{message_id}\r\n\r\n"
    ).encode()
    return Message(
        **base, internal_date=when, head=head, snippet=snippet, **fields,
        generated=Generated("1", attachment, seed), tail=f"--{boundary}--\r\n".encode(),
        attachments=True,
    )  # fmt: skip


class MailStore:
    """Every account's mailbox and the uploads under way, behind one lock."""

    def __init__(self, now: Callable[[], int]) -> None:
        self.lock = threading.RLock()
        self._now = now
        self._boxes: dict[str, Mailbox] = {}
        self._serial = 0
        self.uploads: dict[str, Upload] = {}

    def reset(self) -> None:
        """Forget every mailbox and upload."""
        with self.lock:
            self._boxes.clear()
            self.uploads.clear()
            self._serial = 0

    def new_id(self) -> str:
        """Return a new message id."""
        with self.lock:
            self._serial += 1
            return f"{ID_BASE + self._serial:016x}"

    def forget(self, sub: str) -> None:
        """Drop an account's mailbox; the next call regenerates its default one."""
        with self.lock:
            self._boxes.pop(sub, None)

    def mailbox(self, account: Account) -> Mailbox:
        """Return the account's mailbox, generating the default one from its figures."""
        with self.lock:
            box = self._boxes.get(account.sub)
            if box is None:
                history = account.history_id
                box = self.seed(
                    account,
                    messages=account.messages_total,
                    threads=account.threads_total,
                    attachment_bytes=DEFAULT_ATTACHMENT_BYTES,
                    seed=zlib.crc32(account.email.lower().encode()),
                    history_id=int(history) if history.isdigit() else 1,
                )
            return box

    def seed(
        self, account: Account, *, messages: int, threads: int, attachment_bytes: int | None,
        seed: int, history_id: int,
    ) -> Mailbox:  # fmt: skip
        """Replace the account's mailbox with `messages` generated ones in `threads` threads.

        The newest message carries an attachment of `attachment_bytes` (none when 0 or None).
        """
        rng = random.Random(seed)  # noqa: S311 - deterministic test content
        box = Mailbox(account.email, history_id)
        threads = max(1, min(threads, messages))
        now_ms = self._now() * 1000
        topics: list[str] = []
        thread_ids: list[str] = []
        for i in range(messages):
            message_id = self.new_id()
            t = i % threads
            if t == len(thread_ids):
                thread_ids.append(message_id)
                topics.append(rng.choice(TOPICS))
            newest = i == messages - 1
            attachment = attachment_bytes if newest and attachment_bytes else None
            message = _generated_message(
                rng, account.email, message_id, thread_ids[t], topics[t], i >= threads,
                now_ms - (messages - i) * 600_000, attachment, seed,
            )  # fmt: skip
            message.label_ids = _seeded_labels(i)
            if "SENT" in message.label_ids:
                message.sender, message.recipients = account.email, message.sender
            else:
                message.recipients = account.email
            message.history_id = history_id
            box.messages[message_id] = message
        with self.lock:
            self._boxes[account.sub] = box
        return box

    def send(
        self, sender: Account, raw: bytes, thread_id: str | None,
        find: Callable[[str], Account | None],
    ) -> Message:  # fmt: skip
        """Keep a sent message under SENT; deliver it to the emulator accounts it names."""
        parsed = mime.parse(raw)
        to = ", ".join(mime.header(parsed, key) for key in ("To", "Cc", "Bcc"))
        addresses = [address for _, address in getaddresses([to]) if "@" in address]
        if not addresses:
            raise MailError(400, "Recipient address required")
        if not mime.header(parsed, "From"):
            raw = f"From: {sender.email}\r\n".encode() + raw
            parsed = mime.parse(raw)
        delivered, delivered_parsed = raw, parsed
        if mime.header(parsed, "Bcc"):
            delivered = _without_bcc(raw)
            delivered_parsed = mime.parse(delivered)
        now_ms = self._now() * 1000
        with self.lock:
            box = self.mailbox(sender)
            known = thread_id if thread_id and any(
                m.thread_id == thread_id for m in box.messages.values()
            ) else None  # fmt: skip
            sent = self._message(raw, parsed, known, ["SENT"], now_ms)
            if sender.email.lower() in {a.lower() for a in addresses}:
                sent.label_ids += ["INBOX", "UNREAD"]
            box.add(sent)
            for address in dict.fromkeys(a.lower() for a in addresses):
                account = find(address)
                if account is None or account.sub == sender.sub:
                    continue
                copy = self._message(
                    delivered, delivered_parsed, None, ["INBOX", "UNREAD"], now_ms
                )
                self.mailbox(account).add(copy)
        return sent

    def _message(
        self, raw: bytes, parsed: Any, thread_id: str | None, labels: list[str], when: int
    ) -> Message:
        message_id = self.new_id()
        has_files = any(part.get_filename() for part in parsed.walk())
        return Message(
            id=message_id,
            thread_id=thread_id or message_id,
            label_ids=list(labels),
            history_id=0,
            internal_date=when,
            head=raw,
            snippet=mime.snippet(parsed),
            subject=mime.header(parsed, "Subject"),
            sender=mime.header(parsed, "From"),
            recipients=mime.header(parsed, "To"),
            attachments=has_files,
        )


def _without_bcc(raw: bytes) -> bytes:
    """Drop the Bcc header (and its folded lines), leaving every other byte as sent."""
    # The header block ends with the line break before the first empty line.
    ends = [at + n for at, n in ((raw.find(b"\r\n\r\n"), 2), (raw.find(b"\n\n"), 1)) if at >= 0]
    split = min(ends) if ends else len(raw)
    kept, dropping = [], False
    for line in raw[:split].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"bcc:")
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[split:]


def _seeded_labels(i: int) -> list[str]:
    labels = ["SENT"] if i % 5 == 4 else ["INBOX", "CATEGORY_PERSONAL"]
    if "INBOX" in labels and i % 3 == 0:
        labels.append("UNREAD")
    if i % 4 == 0:
        labels.append("IMPORTANT")
    if i % 7 == 0:
        labels.append("STARRED")
    if i % 10 == 1:
        labels.append("Label_1")
    return labels
