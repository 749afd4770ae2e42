"""Every `/_emulator/` control, including faults that never stall the controls themselves."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from broker.emulator import create_app
from tests.integration.emulator.support import GMAIL_READONLY, OAuthClient, refresh
from tests.plugins.emulator import EmulatorControls


def _token_call(emulator: EmulatorControls, timeout: float = 10) -> requests.Response:
    data = {
        "grant_type": "refresh_token",
        "refresh_token": "1//nothing",
        "client_id": "c",
        "client_secret": "s",
    }
    return requests.post(f"{emulator.url}/token", data=data, timeout=timeout)


def test_accounts_are_created_listed_and_updated(emulator: EmulatorControls) -> None:
    made = emulator.add_account("carol@corp.test", hd="corp.test", sub="42", name="Carol C")
    assert made == {"sub": "42", "email": "carol@corp.test"}
    plain = emulator.add_account("dave@example.test")
    assert plain["sub"].isdigit() and len(plain["sub"]) == 21
    emulator.add_account("carol@corp.test", email_verified=False)
    accounts = {a["email"]: a for a in emulator.accounts()}
    assert accounts["carol@corp.test"]["hd"] == "corp.test"
    assert accounts["carol@corp.test"]["email_verified"] is False
    assert accounts["dave@example.test"]["hd"] is None
    emulator.control("POST", "accounts", {"email": "eve@x.test", "sub": "42"}, status=400)
    emulator.control("POST", "accounts", {"email": "not-an-address"}, status=400)


def test_clients_are_registered(emulator: EmulatorControls) -> None:
    emulator.add_client("c1", "s1", ["http://127.0.0.1:9/a"])
    listed = emulator.control("GET", "clients")["clients"]
    assert {"client_id": "c1", "redirect_uris": ["http://127.0.0.1:9/a"]} in listed
    emulator.control("POST", "clients", {"client_id": "c2"}, status=400)


def test_minted_grant_answers_like_the_token_endpoint(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.add_account("alice@acme.test")
    grant = emulator.grant("alice@acme.test", oauth_client.client_id, [GMAIL_READONLY])
    assert list(grant) == ["access_token", "expires_in", "refresh_token", "scope", "token_type"]
    assert grant["scope"] == GMAIL_READONLY
    body = {"email": "ghost@acme.test", "client_id": oauth_client.client_id, "scopes": ["email"]}
    emulator.control("POST", "grants", body, status=404)


def test_expire_one_account_or_all(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    for email in ("alice@acme.test", "bob@acme.test"):
        emulator.add_account(email)
        emulator.grant(email, oauth_client.client_id, ["email"])
    assert emulator.expire("alice@acme.test") == {"expired": 1}
    assert emulator.expire() == {"expired": 1}


def test_settings_validate_and_report(emulator: EmulatorControls) -> None:
    assert emulator.settings() == {
        "access_token_lifetime": 3599,
        "refresh_token_limit": 100,
        "testing_refresh_ttl": None,
        "auto_consent": None,
        "gmail_user_quota": 15_000,
        "gmail_project_quota": 1_200_000,
        "gmail_user_concurrency": None,
    }
    assert emulator.settings(access_token_lifetime=10)["access_token_lifetime"] == 10
    emulator.control("POST", "settings", {"refresh_token_limit": 0}, status=400)
    emulator.control("POST", "settings", {"gmail_user_concurrency": 0}, status=400)
    emulator.control("POST", "settings", {"colour": "blue"}, status=400)


def test_clock_moves_issued_times(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    emulator.add_account("alice@acme.test")
    before = int(time.time())
    assert emulator.clock(86400)["offset_seconds"] == 86400
    token = emulator.grant("alice@acme.test", oauth_client.client_id, ["email"])["access_token"]
    info = requests.get(
        f"{emulator.url}/tokeninfo", params={"access_token": token}, timeout=10
    ).json()
    assert int(info["exp"]) >= before + 86400 + 3599
    emulator.clock(0)  # absolute, not cumulative
    assert int(emulator.clock(0)["now"]) < before + 100


def test_frozen_clock_stands_still_and_offsets_move_it(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.add_account("alice@acme.test")
    assert emulator.freeze(1_000_000_000) == 1_000_000_000
    token = emulator.grant("alice@acme.test", oauth_client.client_id, ["email"])["access_token"]
    info = requests.get(
        f"{emulator.url}/tokeninfo", params={"access_token": token}, timeout=10
    ).json()
    assert (info["exp"], info["expires_in"]) == (str(1_000_000_000 + 3599), "3599")
    assert emulator.clock(60) == {
        "offset_seconds": 60,
        "frozen_at": 1_000_000_000,
        "now": 1_000_000_060,
    }
    emulator.unfreeze()
    assert emulator.clock(0)["now"] > 1_000_000_060  # running with real time again
    emulator.freeze(1_000_000_000)
    emulator.reset()
    assert emulator.clock(0)["frozen_at"] is None


@pytest.mark.parametrize(
    "body",
    [{}, {"frozen_at": "now"}, {"frozen_at": True}, {"frozen_at": -1}, {"offset_seconds": 1.5}],
)
def test_clock_refuses_bad_values(emulator: EmulatorControls, body: dict[str, object]) -> None:
    answer = emulator.control("POST", "clock", body, status=400)
    assert answer["error"] == "bad_control"


def test_fault_with_status_and_body_then_normal(emulator: EmulatorControls) -> None:
    emulator.fault("token", status=503, body={"error": "temporarily_unavailable"}, count=2)
    for _ in range(2):
        answer = _token_call(emulator)
        assert answer.status_code == 503
        assert answer.json() == {"error": "temporarily_unavailable"}
        assert answer.headers["Cache-Control"].startswith("no-cache")
    assert _token_call(emulator).status_code == 401  # unknown client "c": the real answer
    assert emulator.calls()["token"] == {"authorization_code": 0, "refresh_token": 3}


def test_fault_until_cleared(emulator: EmulatorControls) -> None:
    emulator.fault("certs", status=500, count=-1)
    for _ in range(3):
        assert requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10).status_code == 500
    assert emulator.control("GET", "faults")["faults"][0]["count"] == -1
    emulator.clear_faults()
    assert requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10).status_code == 200


def test_latency_fault_delays_a_normal_answer(emulator: EmulatorControls) -> None:
    emulator.fault("tokeninfo", latency_ms=300)
    started = time.monotonic()
    answer = requests.get(f"{emulator.url}/tokeninfo", params={"access_token": "x"}, timeout=10)
    assert time.monotonic() - started >= 0.3
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_token"


def test_hang_does_not_stall_the_controls_and_is_released(emulator: EmulatorControls) -> None:
    emulator.fault("token", mode="hang")
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["answer"] = _token_call(emulator, timeout=30)
        except requests.RequestException as error:
            outcome["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while emulator.calls()["token"]["refresh_token"] < 1:  # the controls still answer
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _token_call(emulator).status_code == 401  # the fault was for one call only
    assert caller.is_alive()
    started = time.monotonic()
    emulator.clear_faults()
    caller.join(timeout=5)
    assert not caller.is_alive() and time.monotonic() - started < 5
    assert isinstance(outcome.get("error"), requests.ConnectionError)


def test_a_hanging_endpoint_times_clients_out(emulator: EmulatorControls) -> None:
    emulator.fault("revoke", mode="hang", count=-1)
    for _ in range(2):
        with pytest.raises(requests.Timeout):
            requests.post(f"{emulator.url}/revoke", data={"token": "x"}, timeout=0.3)
    assert emulator.calls()["revoke"] == 2


def test_close_drops_the_connection(emulator: EmulatorControls) -> None:
    emulator.fault("gmail", mode="close")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{emulator.url}/gmail/v1/users/me/profile", timeout=10)
    assert requests.get(f"{emulator.url}/gmail/v1/users/me/profile", timeout=10).status_code == 401
    assert emulator.calls()["gmail"] == 2


def test_bad_fault_specs_are_refused(emulator: EmulatorControls) -> None:
    for spec in (
        {"endpoint": "nowhere", "status": 500},
        {"endpoint": "token"},
        {"endpoint": "token", "mode": "explode"},
        {"endpoint": "token", "status": 9},
    ):
        emulator.control("POST", "faults", spec, status=400)


def test_calls_count_every_endpoint(emulator: EmulatorControls, oauth_client: OAuthClient) -> None:
    emulator.add_account("alice@acme.test")
    grant = emulator.grant("alice@acme.test", oauth_client.client_id, ["email"])
    requests.get(f"{emulator.url}/o/oauth2/v2/auth", timeout=10)
    refresh(emulator, oauth_client, grant["refresh_token"])
    requests.post(f"{emulator.url}/token", data={"grant_type": "authorization_code"}, timeout=10)
    requests.get(f"{emulator.url}/v1/userinfo", timeout=10)
    requests.get(f"{emulator.url}/oauth2/v3/certs", timeout=10)
    requests.get(f"{emulator.url}/tokeninfo", timeout=10)
    requests.get(f"{emulator.url}/gmail/v1/users/me/profile", timeout=10)
    requests.post(f"{emulator.url}/revoke", data={"token": grant["access_token"]}, timeout=10)
    assert emulator.calls() == {
        "authorize": 1,
        "token": {"authorization_code": 1, "refresh_token": 1},
        "revoke": 1,
        "userinfo": 1,
        "certs": 1,
        "tokeninfo": 1,
        "gmail": 1,
        "gmail_methods": {"gmail.users.getProfile": 1},
        "refreshes_by_account": {"alice@acme.test": 1},
    }


def test_reset_forgets_all_but_clients(
    emulator: EmulatorControls, oauth_client: OAuthClient
) -> None:
    emulator.add_account("alice@acme.test")
    token = emulator.grant("alice@acme.test", oauth_client.client_id, ["email"])["refresh_token"]
    emulator.settings(access_token_lifetime=5)
    emulator.fault("revoke", status=500, count=-1)
    emulator.clock(1000)
    emulator.reset()
    assert emulator.accounts() == []
    assert emulator.settings()["access_token_lifetime"] == 3599
    assert emulator.control("GET", "faults") == {"faults": []}
    assert emulator.calls()["token"]["refresh_token"] == 0
    assert refresh(emulator, oauth_client, token).json()["error"] == "invalid_grant"
    ids = [c["client_id"] for c in emulator.control("GET", "clients")["clients"]]
    assert oauth_client.client_id in ids


def test_controls_answer_loopback_peers_only() -> None:
    app = create_app(testing=True)
    remote = app.test_client().get("/_emulator/calls", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403
    local = app.test_client().get("/_emulator/calls", environ_base={"REMOTE_ADDR": "::1"})
    assert local.status_code == 200
