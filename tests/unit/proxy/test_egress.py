"""Strict egress: raw paths refused before anything leaves, methods matched, paths rebuilt."""

from __future__ import annotations

import pytest

from broker.google import gmail_methods
from broker.proxy import BatchRefused, EgressRefused, raw_path, resolve
from broker.proxy.egress import request_headers, response_headers

TABLE = gmail_methods()
BASE = "https://gmail.googleapis.com"


@pytest.mark.parametrize("raw", [
    "/proxy/gmail/v1/users/me/../me/profile",  # dot-dot segment
    "/proxy/gmail/v1/users/me/./profile",  # dot segment
    "/proxy/gmail/v1/users/me/%2e%2e/profile",  # encoded dot-dot
    "/proxy/gmail/v1/users/me%2Fother/profile",  # encoded slash
    "/proxy/gmail/v1/users/me%5cother/profile",  # encoded backslash
    "/proxy/gmail/v1/users/me\\other/profile",  # backslash
    "/proxy/gmail//v1/users/me/profile",  # doubled slash
    "/proxy/gmail/v1/users/me/profile/",  # trailing slash: an empty segment
    "/proxy/gmail/v1/users/me%0d%0aX-Injected:1/profile",  # CR/LF
    "/proxy/gmail/v1/users/me%00/profile",  # NUL
    "/proxy/gmail/v1/users/me%252f/profile",  # double encoding
    "/proxy/https://evil.example/gmail/v1/users/me/profile",  # absolute URL
    "/proxy/gmail/v1/users/me/nothing-here",  # no Gmail method
    "/proxy/gmail/v2/users/me/profile",  # no Gmail method
])
def test_ambiguous_or_unknown_paths_are_refused(raw: str) -> None:
    with pytest.raises(EgressRefused):
        resolve(TABLE, "GET", raw, b"")


def test_batch_is_refused_with_its_own_code() -> None:
    with pytest.raises(BatchRefused) as refused:
        resolve(TABLE, "POST", "/proxy/batch/gmail/v1", b"")
    assert refused.value.error == "batch_not_supported"


def test_a_method_is_matched_and_its_path_rebuilt_with_each_parameter_encoded() -> None:
    egress = resolve(TABLE, "GET", "/proxy/gmail/v1/users/alice%40acme.test/messages/a%20b",
                     b"format=metadata&metadataHeaders=Subject&metadataHeaders=From")
    assert egress.method_id == "gmail.users.messages.get"
    assert egress.user == "alice@acme.test"
    assert egress.url(BASE) == (BASE + "/gmail/v1/users/me/messages/a%20b?format=metadata"
                                "&metadataHeaders=Subject&metadataHeaders=From")
    assert egress.audited_query() == {"format": "metadata", "metadataHeaders": "…,…"}


def test_literal_segments_win_and_uploads_match_their_method() -> None:
    assert resolve(TABLE, "POST", "/proxy/gmail/v1/users/me/messages/send", b"").method_id \
        == "gmail.users.messages.send"
    upload = resolve(TABLE, "POST", "/proxy/upload/gmail/v1/users/me/messages/send",
                     b"uploadType=multipart")
    assert upload.method_id == "gmail.users.messages.send"
    assert upload.url(BASE) == (BASE + "/upload/gmail/v1/users/me/messages/send"
                                "?uploadType=multipart")
    resumed = resolve(TABLE, "PUT", "/proxy/upload/gmail/v1/users/me/messages/send",
                      b"uploadType=resumable&upload_id=xyz")
    assert (resumed.method_id, resumed.http_method) == ("gmail.users.messages.send", "PUT")
    with pytest.raises(EgressRefused):  # the wrong HTTP method matches nothing
        resolve(TABLE, "PATCH", "/proxy/gmail/v1/users/me/messages/send", b"")


@pytest.mark.parametrize("query", [
    b"access_token=ya29.secret",  # a credential in the query is never forwarded
    b"key=AIza",
    b"callback=x",
    b"format=full&nonsense=1",
    b"format=%ff",  # not UTF-8
    b"format=a%0d%0ab",  # CR/LF in a value
])
def test_undeclared_or_malformed_query_parameters_are_refused(query: bytes) -> None:
    with pytest.raises(EgressRefused):
        resolve(TABLE, "GET", "/proxy/gmail/v1/users/me/messages/abc", query)


def test_raw_path_prefers_the_undecoded_request_target() -> None:
    environ = {"RAW_URI": "/proxy/gmail/v1/users/me%2Fx/profile?alt=json",
               "PATH_INFO": "/proxy/gmail/v1/users/me/x/profile"}
    assert raw_path(environ) == "/proxy/gmail/v1/users/me%2Fx/profile"


def test_headers_pass_only_from_the_allowlists_and_upload_urls_point_back() -> None:
    sent = request_headers([("Authorization", "Bearer x"), ("Cookie", "s=1"), ("Host", "evil"),
                            ("Connection", "close"), ("X-Forwarded-For", "1.2.3.4"),
                            ("Content-Type", "message/rfc822"), ("Accept", "*/*")])
    assert sent == {"content-type": "message/rfc822", "accept": "*/*"}
    back = response_headers(
        [("WWW-Authenticate", "Bearer realm=x"), ("Set-Cookie", "a=b"),
         ("Content-Type", "application/json"),
         ("Location", BASE + "/upload/gmail/v1/users/me/messages/send?upload_id=u1"),
         ("X-Goog-Upload-URL", "https://elsewhere.example/upload")],
        (BASE, "https://broker.example/proxy"))
    assert back == [("Content-Type", "application/json"),
                    ("Location", "https://broker.example/proxy/upload/gmail/v1/users/me/"
                                 "messages/send?upload_id=u1")]


def test_the_narrowest_scope_a_method_accepts_is_chosen() -> None:
    get = TABLE.by_id["gmail.users.messages.get"]
    prefix = "https://www.googleapis.com/auth/gmail."
    usable = {prefix + "readonly", prefix + "metadata", prefix + "modify"}
    assert get.narrowest(usable, metadata_ok=True) == prefix + "metadata"
    assert get.narrowest(usable, metadata_ok=False) == prefix + "readonly"
    assert TABLE.by_id["gmail.users.messages.send"].narrowest(usable, True) == prefix + "modify"
    assert get.cost == 5 and TABLE.by_id["gmail.users.messages.send"].cost == 100
    assert "gmail.users.messages.send" not in TABLE.permitted_by([prefix + "readonly"])
