"""Every refusal of the receiver, and that a refused event changes nothing (issue 16 item 2)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask import Flask

from broker.emulator import Emulator
from tests.plugins.emulator import EmulatorControls
from tests.plugins.risc import Stream, connection, events, risc_config

RISC = "https://schemas.openid.net/secevent/risc/event-type/"


def _emulator(stream: Stream) -> Emulator:
    return next(e for e in stream.emulator.app.extensions.values() if isinstance(e, Emulator))


def _claims(stream: Stream, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": stream.emulator.url + "/", "aud": "broker-api-tests.apps.googleusercontent.com",
        "iat": int(time.time()), "jti": f"jti-{time.monotonic_ns()}",
        "events": {RISC + "sessions-revoked": {"subject": {
            "subject_type": "iss-sub", "iss": stream.emulator.url + "/",
            "sub": stream.world.user.google_sub}}},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _post(stream: Stream, body: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(stream.url + "/risc/events", content=body, headers=headers, timeout=10)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unchanged(stream: Stream) -> None:
    assert events(stream.app) == []
    assert stream.world.connection is not None
    conn = connection(stream.app, stream.world.connection.id)
    assert (conn.status, conn.held_at) == ("active", None)
    assert stream.world.token().status_code == 200


@pytest.mark.parametrize(("fault", "err"), [
    ("bad_signature", "invalid_key"), ("unknown_kid", "invalid_key"),
    ("wrong_aud", "invalid_audience"), ("wrong_iss", "invalid_issuer"),
])
def test_emulator_faults_are_refused_and_change_nothing(
    stream: Stream, fault: str, err: str
) -> None:
    answer = stream.send("tokens-revoked", sub=stream.world.user.google_sub, fault=fault)
    assert answer["status"] == 400
    assert answer["body"]["err"] == err and answer["body"]["description"]
    _unchanged(stream)


@pytest.mark.parametrize(("change", "err"), [
    ({"jti": None}, "invalid_request"), ({"iat": None}, "invalid_request"),
    ({"events": None}, "invalid_request"), ({"events": {}}, "invalid_request"),
    ({"iat": "yesterday"}, "invalid_request"), ({"aud": ["a", "b"]}, "invalid_audience"),
    ({"iss": None}, "invalid_issuer"),
])
def test_claims_missing_or_wrong_are_refused(
    stream: Stream, change: dict[str, Any], err: str
) -> None:
    token = _emulator(stream).keys.sign(_claims(stream, **change), typ="secevent+jwt")
    response = _post(stream, token, **{"Content-Type": "application/secevent+jwt"})
    assert response.status_code == 400
    assert response.json()["err"] == err
    _unchanged(stream)


def test_a_list_audience_holding_ours_is_accepted(stream: Stream) -> None:
    claims = _claims(stream, aud=["other", "broker-api-tests.apps.googleusercontent.com"])
    token = _emulator(stream).keys.sign(claims, typ="secevent+jwt")
    # The content type does not matter: the body is the JWS whatever it is.
    assert _post(stream, token, **{"Content-Type": "text/plain"}).status_code == 202


def test_unsigned_and_symmetric_tokens_are_refused(stream: Stream) -> None:
    claims = _b64(_claims(stream))
    kid = _emulator(stream).keys.current_kid()
    none = _b64({"alg": "none", "kid": kid}) + "." + claims + "."
    assert _post(stream, none).json()["err"] == "invalid_key"
    hs = _b64({"alg": "HS256", "kid": kid}) + "." + claims + ".c2lnbmF0dXJl"
    assert _post(stream, hs).json()["err"] == "invalid_key"
    no_kid = _b64({"alg": "RS256"}) + "." + claims + ".c2lnbmF0dXJl"
    assert _post(stream, no_kid).json()["err"] == "invalid_key"
    _unchanged(stream)


@pytest.mark.parametrize("body", [b"", b"not a jws", b"a.b", "é.b.c".encode(), b"x" * 70_000])
def test_malformed_or_oversized_bodies_are_invalid_requests(stream: Stream, body: bytes) -> None:
    response = _post(stream, body)
    assert response.status_code == 400
    assert response.json()["err"] == "invalid_request"
    _unchanged(stream)


def test_the_receiver_is_absent_while_risc_is_off(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_app(**risc_config(emulator, RISC=False))
    response = app.test_client().post("/risc/events", data=b"x.y.z")
    assert response.status_code == 404


def test_the_receiver_is_exempt_from_csrf_and_the_host_redirect(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_app(**risc_config(emulator))
    app.config["BROKER_CANONICAL_HOST"] = True  # tests switch the redirect on explicitly
    # Another Host header, no cookie, no CSRF token: the signature decides (here: none).
    response = app.test_client().post("/risc/events", data=b"x.y.z",
                                      headers={"Host": "broker.internal"})
    assert response.status_code == 400
    assert response.get_json()["err"] == "invalid_request"


def test_the_receiver_is_rate_limited_per_ip(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_app(**risc_config(emulator, RISC_RATE_LIMIT="2/minute"))
    client = app.test_client()
    codes = [client.post("/risc/events", data=b"x", environ_base={"REMOTE_ADDR": "198.51.100.9"})
             .status_code for _ in range(3)]
    assert codes == [400, 400, 429]
    other = client.post("/risc/events", data=b"x", environ_base={"REMOTE_ADDR": "198.51.100.10"})
    assert other.status_code == 400


def test_an_unreachable_configuration_answers_503(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    app = make_app(**risc_config(emulator, RISC_CONFIG_URL=emulator.url + "/no-such-document"))
    token = _emulator_token(emulator)
    response = app.test_client().post("/risc/events", data=token)
    assert response.status_code == 503
    assert response.headers["Retry-After"]


def _emulator_token(emulator: EmulatorControls) -> str:
    keys = next(e for e in emulator.app.extensions.values() if isinstance(e, Emulator)).keys
    claims = {"iss": emulator.url + "/", "aud": "broker-api-tests.apps.googleusercontent.com",
              "iat": int(time.time()), "jti": "j", "events": {RISC + "verification": {}}}
    return keys.sign(claims, typ="secevent+jwt")


def test_a_database_fault_answers_503_so_google_retries(
    make_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    app = make_app(**risc_config(emulator),
                   DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none")
    response = app.test_client().post("/risc/events", data=_emulator_token(emulator))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
