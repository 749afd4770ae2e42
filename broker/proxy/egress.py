"""Strict egress: what of a job's request may reach Gmail, and what of Gmail's answer returns.

The path is read raw (before any decoding), refused on anything ambiguous, matched to one
Gmail method and rebuilt from that method's template; only declared query parameters and an
allowlist of headers pass, either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode

from broker.errors import InvalidRequest
from broker.google import GLOBAL_QUERY, Match, MethodTable

PREFIX = "/proxy/"
BATCH = ("batch/", "batch")
# Forwarded to Gmail: never Authorization, Cookie, Host, hop-by-hop or forwarding headers.
REQUEST_HEADERS = frozenset({
    "accept", "accept-encoding", "content-type", "content-length", "content-range",
    "if-match", "if-none-match", "x-upload-content-type", "x-upload-content-length",
    "x-goog-upload-protocol", "x-goog-upload-command", "x-goog-upload-offset",
})
# Returned to the job: never WWW-Authenticate, Set-Cookie, Alt-Svc or Google's server details.
RESPONSE_HEADERS = frozenset({
    "content-type", "content-length", "content-encoding", "content-disposition", "etag",
    "last-modified", "cache-control", "expires", "range", "retry-after", "location",
    "x-goog-upload-status", "x-goog-upload-url", "x-goog-upload-size-received",
    "x-guploader-uploadid",
})
# Query values the audit may record (issue 13 item 8); the others are recorded by name only.
AUDITED_QUERY = frozenset({"format", "maxResults", "labelIds"})
_FORBIDDEN_RAW = re.compile(r"%(2f|5c|00|0d|0a|25)|[\\\x00-\x1f\x7f]", re.IGNORECASE)


class EgressRefused(InvalidRequest):
    """A proxied request that must not leave: 400, nothing sent."""

    error = "egress_refused"


class BatchRefused(InvalidRequest):
    """Gmail's batch endpoint: one audited, policy-checked call per request, so no batches."""

    error = "batch_not_supported"

    def __init__(self) -> None:
        super().__init__("The batch endpoint is not proxied: send each call on its own "
                         "(google-api-python-client: do not use new_batch_http_request).")


@dataclass(frozen=True)
class Egress:
    """A request the proxy may send: its method, upstream path and query."""

    match: Match
    query: list[tuple[str, str]]
    http_method: str  # as sent: PUT continues a resumable upload of a POST method

    @property
    def method_id(self) -> str:
        """Return the Gmail method id."""
        return self.match.method.id

    @property
    def user(self) -> str:
        """Return the `userId` the job named."""
        return self.match.params.get("userId", "")

    def url(self, base: str) -> str:
        """Return the upstream URL on the fixed Gmail base."""
        path = base.rstrip("/") + self.match.upstream_path()
        return path + ("?" + urlencode(self.query) if self.query else "")

    def audited_query(self) -> dict[str, str]:
        """Return the query as the audit records it: allowlisted values, other names only."""
        out: dict[str, str] = {}
        for name, value in self.query:
            shown = value[:100] if name in AUDITED_QUERY else "…"
            out[name] = f"{out[name]},{shown}" if name in out else shown
        return out


def raw_path(environ: Mapping[str, object]) -> str:
    """Return the request target's path as the client sent it (before percent-decoding)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw:
        return raw.split("?", 1)[0]
    # No raw target (some WSGI servers): PATH_INFO is decoded, so encoded slashes are lost;
    # re-encode what decoding would have hidden so the checks below still see them.
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    return path.encode("latin-1").decode("utf-8", "replace")


def split_path(raw: str) -> list[str]:
    """Return the decoded segments after /proxy/, refusing anything ambiguous."""
    if raw.startswith(("http:", "https:")) or "://" in raw:
        raise EgressRefused("absolute URLs are not proxied")
    if not raw.startswith(PREFIX):
        raise EgressRefused("proxied paths start with /proxy/")
    rest = raw[len(PREFIX):]
    if _FORBIDDEN_RAW.search(rest):
        raise EgressRefused("encoded slashes, backslashes, control characters and "
                            "double encoding are refused")
    segments = []
    for part in rest.split("/"):
        if part == "":
            raise EgressRefused("empty path segments (doubled or trailing slashes) are refused")
        try:
            value = unquote(part, errors="strict")
        except UnicodeDecodeError:
            raise EgressRefused("path segments must be UTF-8") from None
        if value in (".", ".."):
            raise EgressRefused("dot segments are refused")
        segments.append(value)
    return segments


def resolve(table: MethodTable, http_method: str, raw: str, query_string: bytes) -> Egress:
    """Match a raw request to one Gmail method and keep only what may leave."""
    segments = split_path(raw)
    if segments and segments[0] == "batch":
        raise BatchRefused()
    continuing = http_method == "PUT" and segments[0] in ("upload", "resumable") and (
        b"upload_id=" in query_string)
    match = table.match("POST" if continuing else http_method, segments)
    if match is None:
        raise EgressRefused(f"no Gmail method is {http_method} at this path",
                            reason="unknown_method")
    return Egress(match, _query(match, query_string), http_method)


def _query(match: Match, query_string: bytes) -> list[tuple[str, str]]:
    try:
        text = query_string.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise EgressRefused("the query string is malformed") from None
    allowed = match.method.query_params | GLOBAL_QUERY
    for name, value in pairs:
        if name not in allowed:
            raise EgressRefused(f"{match.method.id} takes no query parameter {name[:40]!r}")
        if _FORBIDDEN_RAW.search(value.replace("%", "")) or len(value) > 2048:
            raise EgressRefused("query values must be text without control characters")
    return pairs


def request_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return the job's headers that may reach Gmail."""
    return {k.lower(): v for k, v in headers if k.lower() in REQUEST_HEADERS}


def response_headers(
    headers: Iterable[tuple[str, str]], rewrite_location: tuple[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Return Gmail's headers that may reach the job; upload URLs point back at the broker."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower not in RESPONSE_HEADERS:
            continue
        if lower in ("location", "x-goog-upload-url"):
            if rewrite_location is None or not value.startswith(rewrite_location[0]):
                continue  # a redirect elsewhere is never followed nor shown
            value = rewrite_location[1] + value[len(rewrite_location[0]):]
        out.append((name, value))
    return out
