"""The emulator as a RISC transmitter: configuration, stream API, signed pushes, faults."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.emulator.server import serve_in_thread
from tests.plugins.emulator import EmulatorControls

OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
MANAGEMENT = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"


class Receiver:
    """A receiver on loopback that records every body and answers a set status."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.types: list[str] = []
        self.status = 202
        self.app = Flask("receiver")
        self.app.add_url_rule("/events", "events", self._take, methods=["POST"])
        self.url = ""

    def _take(self) -> tuple[str, int]:
        self.bodies.append(request.get_data())
        self.types.append(request.content_type or "")
        return "", self.status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Serve a recording receiver on a loopback port."""
    found = Receiver()
    url, stop = serve_in_thread(found.app, "127.0.0.1", 0)
    found.url = url + "/events"
    try:
        yield found
    finally:
        stop()


def _claims(emulator: EmulatorControls, token: bytes) -> dict[str, Any]:
    keys = KeySet.import_key_set(httpx.get(emulator.url + "/oauth2/v3/certs").json())
    return dict(jwt.decode(token.decode(), keys, algorithms=["RS256"]).claims)


def _bearer(aud: str = MANAGEMENT) -> dict[str, str]:
    head = base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(f'{{"aud":"{aud}"}}'.encode()).rstrip(b"=").decode()
    return {"Authorization": f"Bearer {head}.{body}.c2ln"}


def test_configuration_names_issuer_and_the_published_keys(emulator: EmulatorControls) -> None:
    document = httpx.get(emulator.url + "/.well-known/risc-configuration").json()
    assert document["issuer"] == emulator.url + "/"  # Google's trailing slash
    assert document["jwks_uri"] == emulator.url + "/oauth2/v3/certs"


def test_send_needs_a_registered_stream(emulator: EmulatorControls) -> None:
    answer = emulator.control("POST", "risc/send", {"event": "verification"}, status=404)
    assert "no RISC configuration" in answer["error_description"]


def test_a_sent_event_is_a_signed_set_with_the_subject(
    emulator: EmulatorControls, receiver: Receiver
) -> None:
    emulator.control("POST", "risc/stream", {"url": receiver.url, "audience": "client-1"})
    answer = emulator.control("POST", "risc/send", {
        "event": "account-disabled", "sub": "12345", "reason": "hijacking"})
    assert answer["status"] == 202
    assert receiver.types == ["application/secevent+jwt"]
    claims = _claims(emulator, receiver.bodies[0])
    assert claims["aud"] == "client-1" and claims["jti"] == answer["jti"]
    assert claims["iss"] == emulator.url + "/" and "exp" not in claims
    event = claims["events"][RISC + "account-disabled"]
    assert event == {"subject": {"subject_type": "iss-sub", "iss": emulator.url + "/",
                                 "sub": "12345"}, "reason": "hijacking"}


def test_the_receivers_answer_comes_back(emulator: EmulatorControls, receiver: Receiver) -> None:
    emulator.control("POST", "risc/stream", {"url": receiver.url})
    receiver.status = 400
    answer = emulator.control("POST", "risc/send", {"event": "sessions-revoked", "email": "a@b"})
    assert answer["status"] == 400


@pytest.mark.parametrize("fault", ["unknown_kid", "bad_signature"])
def test_signature_faults_do_not_verify(
    emulator: EmulatorControls, receiver: Receiver, fault: str
) -> None:
    emulator.control("POST", "risc/stream", {"url": receiver.url})
    emulator.control("POST", "risc/send", {"event": "verification", "fault": fault})
    with pytest.raises(JoseError):
        _claims(emulator, receiver.bodies[0])


def test_claim_faults(emulator: EmulatorControls, receiver: Receiver) -> None:
    emulator.control("POST", "risc/stream", {"url": receiver.url, "audience": "client-1"})
    for fault in ("wrong_aud", "wrong_iss", "expired", "legacy_uri"):
        emulator.control("POST", "risc/send",
                         {"event": "tokens-revoked", "sub": "1", "fault": fault})
    first = emulator.control("POST", "risc/send", {"event": "tokens-revoked", "sub": "1"})
    again = emulator.control("POST", "risc/send",
                             {"event": "tokens-revoked", "sub": "1", "fault": "repeat_jti"})
    aud, iss, expired, legacy, _, repeated = (_claims(emulator, b) for b in receiver.bodies)
    assert aud["aud"] != "client-1"
    assert iss["iss"] != emulator.url + "/"
    assert expired["exp"] < expired["iat"]
    assert list(legacy["events"]) == [RISC + "tokens-revoked"]
    assert first["jti"] == again["jti"] == repeated["jti"]
    bad = emulator.control("POST", "risc/send", {"event": "verification", "fault": "nope"},
                           status=400)
    assert "unknown fault" in bad["error_description"]


def test_revoking_access_tells_the_stream(
    emulator: EmulatorControls, receiver: Receiver
) -> None:
    emulator.add_client("risc-client", "s", ["http://127.0.0.1/cb"])
    account = emulator.add_account("carol@acme.test")
    refresh = emulator.grant("carol@acme.test", "risc-client", ["openid", "email"])
    # No stream yet: revoking works as before and tells nobody.
    assert emulator.revoke_account("carol@acme.test")["risc"] == []
    assert receiver.bodies == []
    refresh = emulator.grant("carol@acme.test", "risc-client", ["openid", "email"])
    emulator.control("POST", "risc/stream", {"url": receiver.url})
    assert emulator.revoke_account("carol@acme.test")["risc"] == [202, 202]
    token_event, all_event = (_claims(emulator, b)["events"] for b in receiver.bodies)
    subject = token_event[OAUTH + "token-revoked"]["subject"]
    inner = hashlib.sha512(refresh["refresh_token"].encode()).digest()
    assert subject["token_identifier_alg"] == "hash_base64_sha512_sha512"
    assert base64.b64decode(subject["token"]) == hashlib.sha512(inner).digest()
    assert all_event[OAUTH + "tokens-revoked"]["subject"]["sub"] == account["sub"]


def test_the_stream_api_wants_a_service_account_assertion(
    emulator: EmulatorControls, receiver: Receiver
) -> None:
    update = {"delivery": {"delivery_method":
                           "https://schemas.openid.net/secevent/risc/delivery-method/push",
                           "url": receiver.url}, "events_requested": []}
    url = emulator.url + "/v1beta/stream:update"
    assert httpx.post(url, json=update).status_code == 401
    assert httpx.post(url, json=update, headers=_bearer("other")).status_code == 401
    assert httpx.post(url, json=update, headers=_bearer()).status_code == 200
    status = httpx.get(emulator.url + "/v1beta/stream/status", headers=_bearer()).json()
    assert status == {"status": "enabled"}
    verify = httpx.post(emulator.url + "/v1beta/stream:verify", json={"state": "s1"},
                        headers=_bearer())
    assert verify.status_code == 200
    assert _claims(emulator, receiver.bodies[-1])["events"] == {
        RISC + "verification": {"state": "s1"}}
    httpx.post(emulator.url + "/v1beta/stream/status:update", json={"status": "disabled"},
               headers=_bearer())
    dropped = emulator.control("POST", "risc/send", {"event": "verification"})
    assert dropped["status"] == 0 and len(receiver.bodies) == 1
