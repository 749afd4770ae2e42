"""Bad input on every API field and channel: each a 4xx JSON error with an `error` code."""

from __future__ import annotations

import io
import json
from typing import Any

from werkzeug.test import TestResponse

from tests.plugins.world import READONLY, World

TOKEN = "/api/v1/token"
NUL = ["\x00", "a\x00b", "\u0000@acme.test"]
SURROGATES = ["\ud800", "\udfff"]
WEIRD = [
    "é", "ü@exämple.test", "\u202e", "\ufeff", "\U0001f600", "\x01", "\x7f", "\\", "'\"--;",
    "\n\r", " ", "%00", "a" * 5000, "🔑" * 300,
]


def _body(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def _is_json_4xx(response: TestResponse) -> bool:
    try:
        code = response.get_json(silent=True) or {}
    except Exception:  # noqa: BLE001 - any parse failure is the finding
        return False
    return (
        400 <= response.status_code < 500
        and response.mimetype == "application/json"
        and isinstance(code.get("error"), str)
        and bool(code["error"])
    )


def _check(cases: list[tuple[str, TestResponse]], may_serve: tuple[str, ...] = ()) -> None:
    """Every answer must be a 4xx JSON error; labels starting with `may_serve` may also be 200."""
    bad = [
        (label, r.status_code, r.mimetype, _body(r)[:120])
        for label, r in cases
        if not (_is_json_4xx(r) or (label.startswith(may_serve) and r.status_code == 200))
    ]
    assert not bad, bad


def _post(world: World, data: Any, content_type: str = "application/json",
          **kwargs: Any) -> TestResponse:
    return world.app.test_client().post(
        TOKEN, data=data, content_type=content_type,
        headers={"Authorization": world.auth, **kwargs.pop("headers", {})}, **kwargs,
    )


def _field_values(
    world: World, weirds: list[str] = WEIRD
) -> list[tuple[str, dict[str, Any]]]:
    email = world.user.email
    cases: list[tuple[str, dict[str, Any]]] = []
    for weird in weirds:
        cases += [
            (f"user={weird[:8]!r}", {"user": weird}),
            (f"user+={weird[:8]!r}", {"user": email + weird}),
            (f"scope={weird[:8]!r}", {"user": email, "scopes": [weird]}),
            (f"scope+={weird[:8]!r}", {"user": email, "scopes": [READONLY + weird]}),
            (f"rejected={weird[:8]!r}", {"user": email, "rejected_token": weird}),
            (f"min_ttl={weird[:8]!r}", {"user": email, "min_ttl": weird}),
            (f"key={weird[:8]!r}", {"user": email, weird: 1}),
        ]
    if weirds is not WEIRD:
        return cases
    for value in (None, True, 1, -1, 1.5, 1e308, [], {}, [email], 10**40):
        cases += [
            (f"user={value!r}", {"user": value}),
            (f"scopes={value!r}", {"user": email, "scopes": value}),
            (f"rejected={value!r}", {"user": email, "rejected_token": value}),
        ]
    for ttl in (-1, 3001, 10**30, 1.0, True, None, "300", [300]):
        cases.append((f"min_ttl={ttl!r}", {"user": email, "min_ttl": ttl}))
    cases += [
        ("scopes=[]", {"user": email, "scopes": []}),
        ("21 scopes", {"user": email, "scopes": [READONLY] * 21}),
        ("nested scope", {"user": email, "scopes": [[READONLY]]}),
        ("no user", {"scopes": [READONLY]}),
        ("rejected 2049 B", {"user": email, "rejected_token": "y" * 2049}),
    ]
    return cases


def _send_fields(world: World, weirds: list[str]) -> list[tuple[str, TestResponse]]:
    # ensure_ascii sends lone surrogates as \\ud800 escapes, as a hostile client would.
    return [(label, _post(world, json.dumps(body))) for label, body in _field_values(world, weirds)]


def test_every_field_refuses_unicode_controls_and_wrong_types(world_ro: World) -> None:
    world = world_ro
    cases = _send_fields(world, WEIRD)
    # An unknown rejected_token is simply not the stored one; padding around a user may be
    # trimmed: either may be served.
    spaces = tuple(f"scope+={pad!r}" for pad in (" ", "\n\r"))
    _check(cases, may_serve=("rejected=", "user+=", "scopes=None", *spaces))
    assert world.token().status_code == 200  # and the broker still serves


def test_nul_in_every_field_is_4xx(world_ro: World) -> None:
    _check(_send_fields(world_ro, NUL), may_serve=("rejected=",))


def test_lone_surrogates_in_every_field_are_4xx(world_ro: World) -> None:
    _check(_send_fields(world_ro, SURROGATES))


MALFORMED = [
    b"", b"{", b"}", b"[1,", b"nul", b"null", b"[]", b'"user"', b"1", b"\xff\xfe{}",
    b'{"user": "a"}garbage', b'{"user": "a",}', b"{'user': 'a'}", b'{"user": NaN}',
    b'{"user": "a", "min_ttl": Infinity}', b"\x00", b'{"user": "\x00"}',
    b"\xef\xbb\xbf{}", "{\"user\": \"\u00e9\"}".encode("latin-1"),
    b'{"user": "x", "user": "x"}', b'{"user": "x", "scopes": [], "scopes": []}',
    b'{"user": "x", "min_ttl": 1' + b"0" * 5000 + b"}",
]


def test_malformed_json_is_400(world_ro: World) -> None:
    _check([(repr(raw[:40]), _post(world_ro, raw)) for raw in MALFORMED])




def test_deeply_nested_json_is_400(world_ro: World) -> None:
    _check([("deep", _post(world_ro, b"[" * 16_000 + b"]" * 0))])


def test_huge_bodies_are_refused(world_ro: World) -> None:
    world = world_ro
    big = b'{"user": "' + b"a" * 70_000 + b'"}'
    _check([
        ("17 KiB", _post(world, b'{"user": "' + b"a" * 17_000 + b'"}')),
        ("70 KiB", _post(world, big)),
        ("1 MiB", _post(world, b" " * (1 << 20))),
        ("chunked 70 KiB", world.app.test_client().post(
            TOKEN, input_stream=io.BytesIO(big), content_type="application/json",
            headers={"Authorization": world.auth, "Transfer-Encoding": "chunked"})),
        ("lying length", _post(world, big, headers={"Content-Length": "10"})),
    ])


CONTENT_TYPES = [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/json-patch+xml", "", "application/jsonx", "*/*",
    "application/json\x00", "text/json",
]


def test_wrong_content_types_are_415_or_400(world_ro: World) -> None:
    body = f'{{"user": "{world_ro.user.email}"}}'
    _check([(ct, _post(world_ro, body, content_type=ct)) for ct in CONTENT_TYPES])




def test_connections_query_refuses_bad_and_duplicate_parameters(world_ro: World) -> None:
    world = world_ro
    client = world.app.test_client()
    queries = [
        "limit=0", "limit=501", "limit=-1", "limit=abc", "limit=1.5", "limit=", "limit=%00",
        "limit=1&limit=2", "status=active&status=revoked", "status=Active", "status=%00",
        "status=%F0%9F%98%80", "cursor=%00", "cursor=!!!", "cursor=AAAA", "cursor=%C3%A9",
        "cursor=" + "A" * 5000, "unknown=1", "%00=1", "status", "limit=1e3", "limit=0x10",
    ]
    _check([
        (q, client.get(f"/api/v1/connections?{q}", headers={"Authorization": world.auth}))
        for q in queries
    ])
    ok = client.get("/api/v1/connections?limit=1&status=active",
                    headers={"Authorization": world.auth})
    assert ok.status_code == 200


def test_unicode_digits_in_limit_are_400(world_ro: World) -> None:
    client = world_ro.app.test_client()
    _check([
        (digits, client.get(f"/api/v1/connections?limit={digits}",
                            headers={"Authorization": world_ro.auth}))
        for digits in ("%C2%B2", "%E2%91%A0")  # '²', '①'
    ])


def test_bad_credentials_and_methods_are_json_4xx(world_ro: World) -> None:
    world = world_ro
    client = world.app.test_client()
    body = {"user": world.user.email}
    headers = [
        "Basic", "Basic ", "Basic !!!", "Basic AAAA", "Bearer x", "Basic " + "A" * 5000,
        "Basic " + "OnNlY3JldA==", "Basic dXNlcjo=", "Basic AA\x00", "basic\tx",
    ]
    cases = [(h[:20], client.post(TOKEN, json=body, headers={"Authorization": h}))
             for h in headers]
    cases += [
        ("GET token", client.get(TOKEN, headers={"Authorization": world.auth})),
        ("PUT token", client.put(TOKEN, json=body, headers={"Authorization": world.auth})),
        ("DELETE connections", client.delete("/api/v1/connections",
                                             headers={"Authorization": world.auth})),
        ("unknown path", client.get("/api/v1/nothing%00here")),
    ]
    _check(cases)


def test_routing_redirects_under_the_api_are_404_json(world_ro: World) -> None:
    client = world_ro.app.test_client()
    auth = {"Authorization": world_ro.auth}
    cases = [
        (f"{method} {path}", client.open(path, method=method, json={}, headers=auth))
        for path in ("/api/v1//token", "/api//v1/token", "/api//v1//token",
                     "/api/v1//connections", "/api/v1///openapi.json")
        for method in ("GET", "POST")
    ]
    _check(cases)
    # A method the merged path does not take is refused before any redirect: 405 is right too.
    assert {label: r.json["error"] for label, r in cases if r.status_code != 405} == {
        "POST /api/v1//token": "not_found", "POST /api//v1/token": "not_found",
        "POST /api//v1//token": "not_found", "GET /api/v1//connections": "not_found",
        "GET /api/v1///openapi.json": "not_found",
    }
    assert not [label for label, r in cases if "Location" in r.headers]
