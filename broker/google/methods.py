"""Gmail's method table (the proxy's, and the allowlists'), from the shipped discovery document.

A proxied path is matched to exactly one method by HTTP method and path template; the upstream
path is rebuilt from that template, never copied from the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from broker.scopes import GMAIL_SCOPES, MAIL_GOOGLE_COM, PREFIX

DISCOVERY = Path(__file__).with_name("gmail.v1.json")

# Quota units per call, from https://developers.google.com/gmail/api/reference/quota.
COSTS = {
    "gmail.users.getProfile": 1, "gmail.users.stop": 50, "gmail.users.watch": 100,
    "gmail.users.drafts.create": 10, "gmail.users.drafts.delete": 10,
    "gmail.users.drafts.get": 5, "gmail.users.drafts.list": 5, "gmail.users.drafts.send": 100,
    "gmail.users.drafts.update": 15, "gmail.users.history.list": 2,
    "gmail.users.labels.create": 5, "gmail.users.labels.delete": 5, "gmail.users.labels.get": 1,
    "gmail.users.labels.list": 1, "gmail.users.labels.patch": 5, "gmail.users.labels.update": 5,
    "gmail.users.messages.attachments.get": 5, "gmail.users.messages.batchDelete": 50,
    "gmail.users.messages.batchModify": 50, "gmail.users.messages.delete": 10,
    "gmail.users.messages.get": 5, "gmail.users.messages.import": 25,
    "gmail.users.messages.insert": 25, "gmail.users.messages.list": 5,
    "gmail.users.messages.modify": 5, "gmail.users.messages.send": 100,
    "gmail.users.messages.trash": 5, "gmail.users.messages.untrash": 5,
    "gmail.users.threads.delete": 20, "gmail.users.threads.get": 10,
    "gmail.users.threads.list": 10, "gmail.users.threads.modify": 10,
    "gmail.users.threads.trash": 10, "gmail.users.threads.untrash": 10,
    "gmail.users.settings.delegates.create": 100,
    "gmail.users.settings.forwardingAddresses.create": 100,
    "gmail.users.settings.sendAs.create": 100,
}
READ_COST, WRITE_COST = 1, 5  # Google's figures for the settings methods the table omits

# Gmail scopes from the narrowest to the broadest: the proxy asks for the first one a method
# accepts, so the token it attaches can do as little as possible (issue 13 item 6).
NARROW_FIRST = tuple(PREFIX + "gmail." + name for name in (
    "labels", "metadata", "send", "insert", "readonly", "compose", "settings.basic",
    "settings.sharing", "modify",
)) + (MAIL_GOOGLE_COM,)
METADATA = PREFIX + "gmail.metadata"
# Global query parameters the proxy passes on; `key`, `access_token`, `oauth_token`,
# `callback` and `quotaUser` are the job's to give up, not the broker's to forward.
GLOBAL_QUERY = frozenset({"alt", "fields", "prettyPrint", "uploadType", "upload_id"})


@dataclass(frozen=True)
class Method:
    """One Gmail method: its id, HTTP method, path templates and what it may be given."""

    id: str
    http_method: str
    templates: tuple[str, ...]  # the REST path first, then media upload paths
    path_params: tuple[str, ...]
    query_params: frozenset[str]
    scopes: tuple[str, ...]
    max_upload: int

    @property
    def cost(self) -> int:
        """Return the method's quota units."""
        default = READ_COST if self.http_method == "GET" else WRITE_COST
        return COSTS.get(self.id, default)

    def narrowest(self, usable: set[str], metadata_ok: bool) -> str | None:
        """Return the narrowest scope of this method among `usable`, or None."""
        for scope in NARROW_FIRST:
            if scope in self.scopes and scope in usable and (scope != METADATA or metadata_ok):
                return scope
        return None


@dataclass(frozen=True)
class Match:
    """A request matched to a method, with its path parameters decoded."""

    method: Method
    template: str
    params: dict[str, str]

    def upstream_path(self, user: str = "me") -> str:
        """Rebuild the path from the template, each parameter percent-encoded whole."""
        values = {**self.params, "userId": user}
        path = self.template
        for name, value in values.items():
            path = path.replace("{" + name + "}", quote(value, safe=""))
        return path if path.startswith("/") else "/" + path


def _segments(template: str) -> tuple[str, ...]:
    return tuple(template.strip("/").split("/"))


class MethodTable:
    """Gmail's methods, indexed for matching by HTTP method and segment count."""

    def __init__(self, methods: list[Method]) -> None:
        self.by_id = {m.id: m for m in methods}
        self._index: dict[tuple[str, int], list[tuple[tuple[str, ...], str, Method]]] = {}
        for method in methods:
            for template in method.templates:
                segs = _segments(template)
                self._index.setdefault((method.http_method, len(segs)), []).append(
                    (segs, template, method))
        for candidates in self._index.values():
            # Literal segments win over parameters: `messages/send` before `messages/{id}`.
            candidates.sort(key=lambda c: -sum(not s.startswith("{") for s in c[0]))

    def match(self, http_method: str, segments: list[str]) -> Match | None:
        """Return the method whose template matches these decoded segments, or None."""
        for segs, template, method in self._index.get((http_method, len(segments)), []):
            params: dict[str, str] = {}
            for pattern, value in zip(segs, segments, strict=True):
                if pattern.startswith("{"):
                    params[pattern[1:-1]] = value
                elif pattern != value:
                    break
            else:
                return Match(method, template, params)
        return None

    def ids(self) -> list[str]:
        """Return every method id, sorted."""
        return sorted(self.by_id)

    def permitted_by(self, scopes: list[str] | tuple[str, ...]) -> list[str]:
        """Return the ids of the methods some of these scopes permit (the default allowlist)."""
        have = set(scopes)
        return sorted(m.id for m in self.by_id.values() if have & set(m.scopes))


@cache
def gmail_methods() -> MethodTable:
    """Return Gmail's method table, read once from the shipped discovery document."""
    document = json.loads(DISCOVERY.read_text(encoding="utf-8"))
    methods = []
    for raw in document["methods"]:
        params = raw["parameters"]
        upload = raw.get("mediaUpload") or {}
        methods.append(Method(
            id=raw["id"], http_method=raw["httpMethod"],
            templates=(raw["path"], *upload.get("paths", ())),
            path_params=tuple(n for n, p in params.items() if p.get("location") == "path"),
            query_params=frozenset(n for n, p in params.items() if p.get("location") == "query"),
            scopes=tuple(s for s in raw["scopes"] if s in GMAIL_SCOPES),
            max_upload=int(upload.get("maxSize", 0)),
        ))
    return MethodTable(methods)
