"""Every row of the action table, acted on through the served receiver (issue 16 item 3)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker import webhooks
from broker.db import get_db
from broker.errors import ReauthRequired
from broker.keys import get_keys
from broker.models import AccessToken, Policy
from broker.tokens import Want, get_tokens
from tests.plugins.risc import (
    Stream,
    audited,
    connection,
    deliveries,
    events,
    sessions,
    signed_in,
)


def _hook(stream: Stream) -> None:
    with get_db(stream.app).transaction() as session:
        webhooks.add(session, get_keys(stream.app), stream.world.tenant.id,
                     url="https://hooks.example.com/risc", events=None, allow_private=False,
                     actor="test")


def _access_tokens(stream: Stream) -> int:
    assert stream.world.connection is not None
    with get_db(stream.app).transaction(write=False) as session:
        return len(session.scalars(select(AccessToken).where(
            AccessToken.connection_id == stream.world.connection.id)).all())


def test_sessions_revoked_ends_the_users_browser_sessions(stream: Stream) -> None:
    browser = signed_in(stream.app, stream.world.user)
    assert browser.get("/connections").status_code == 200
    answer = stream.send("sessions-revoked", sub=stream.world.user.google_sub)
    assert answer["status"] == 202
    (ended,) = sessions(stream.app, stream.world.user.id)
    assert ended.ended_at is not None and ended.end_reason == "google_risc"
    assert browser.get("/connections").status_code != 200
    (row,) = events(stream.app)
    assert (row.kind, row.outcome, row.subject) == (
        "sessions-revoked", "acted", f"iss_sub:{stream.world.user.google_sub}")
    assert audited(stream.app, "risc.sessions-revoked")[0].tenant_id == stream.world.tenant.id


def test_tokens_revoked_needs_reauth_erases_tokens_and_calls_no_revoke(stream: Stream) -> None:
    _hook(stream)
    assert stream.world.token().status_code == 200  # an access token is stored
    assert _access_tokens(stream) == 1
    before = stream.emulator.calls()["revoke"]
    answer = stream.send("tokens-revoked", sub=stream.world.user.google_sub)
    assert answer["status"] == 202
    assert stream.world.connection is not None
    conn = connection(stream.app, stream.world.connection.id)
    assert (conn.status, conn.status_reason) == ("needs_reauth", "revoked_at_google")
    assert conn.refresh_token is None and conn.refresh_token_hash_id is None
    assert _access_tokens(stream) == 0
    assert stream.emulator.calls()["revoke"] == before
    (hook,) = deliveries(stream.app, "connection.needs_reauth")
    assert hook.payload["reason"] == "revoked_at_google"
    refused = stream.world.token()
    assert refused.status_code == 409
    assert refused.get_json()["reason"] == "revoked_at_google"


@pytest.mark.parametrize("alg", ["hash_base64_sha512_sha512", "prefix"])
def test_token_revoked_acts_only_on_the_matching_refresh_token(stream: Stream, alg: str) -> None:
    assert stream.world.connection is not None
    other = stream.send("token-revoked", refresh_token="1//not-our-token-at-all", alg=alg)
    assert other["status"] == 202
    assert connection(stream.app, stream.world.connection.id).status == "active"
    assert events(stream.app)[0].outcome == "ignored"
    ours = stream.send("token-revoked", refresh_token=stream.world.refresh_token, alg=alg)
    assert ours["status"] == 202
    conn = connection(stream.app, stream.world.connection.id)
    assert (conn.status, conn.status_reason) == ("needs_reauth", "revoked_at_google")
    assert [e.outcome for e in events(stream.app)] == ["ignored", "acted"]
    assert events(stream.app)[1].subject == "oauth_token"  # never the identifier


def test_account_disabled_ends_sessions_and_holds_both_paths(stream: Stream) -> None:
    _hook(stream)
    assert stream.world.token().status_code == 200
    browser = signed_in(stream.app, stream.world.user)
    answer = stream.send("account-disabled", sub=stream.world.user.google_sub, reason="hijacking")
    assert answer["status"] == 202
    assert sessions(stream.app, stream.world.user.id)[0].end_reason == "google_risc"
    assert browser.get("/connections").status_code != 200
    # Fast path: a still-valid stored token is not served.
    refused = stream.world.token()
    assert refused.status_code == 409
    body = refused.get_json()
    assert (body["error"], body["reason"]) == ("reauth_required", "google_account_disabled")
    # Slow path: the refresh re-reads the row and refuses as well.
    assert stream.world.connection is not None
    conn = connection(stream.app, stream.world.connection.id)
    assert conn.held_at is not None and conn.status == "active"
    want = Want(conn.id, conn.tenant_id, conn.user_id, [], "", 0, False)
    with pytest.raises(ReauthRequired) as slow:
        get_tokens(stream.app).obtain(want, 10**9)
    assert slow.value.extras["reason"] == "google_account_disabled"
    (hook,) = deliveries(stream.app, "connection.needs_reauth")
    assert hook.payload["reason"] == "google_account_disabled"
    assert events(stream.app)[0].detail == "hijacking"


def test_account_disabled_without_reason_holds_too(stream: Stream) -> None:
    assert stream.send("account-disabled", email=stream.world.user.email)["status"] == 202
    assert stream.world.connection is not None
    assert connection(stream.app, stream.world.connection.id).held_at is not None
    assert stream.world.token().get_json()["reason"] == "google_account_disabled"


def test_bulk_account_is_audited_and_announced_without_a_hold(stream: Stream) -> None:
    _hook(stream)
    browser = signed_in(stream.app, stream.world.user)
    answer = stream.send("account-disabled", sub=stream.world.user.google_sub,
                         reason="bulk-account")
    assert answer["status"] == 202
    assert stream.world.connection is not None
    assert connection(stream.app, stream.world.connection.id).held_at is None
    assert browser.get("/connections").status_code == 200
    (row,) = audited(stream.app, "risc.account-disabled")
    assert row.reason == "bulk-account"
    (hook,) = deliveries(stream.app, "account.flagged")
    assert hook.payload["user_id"] == str(stream.world.user.id)
    assert stream.world.token().status_code == 200


def test_account_enabled_releases_an_older_hold_only(stream: Stream) -> None:
    assert stream.world.connection is not None
    conn_id = stream.world.connection.id
    now = stream.emulator.freeze()
    stream.send("account-disabled", sub=stream.world.user.google_sub, reason="hijacking")
    # An enabling event issued before the hold (delivered late) leaves it in place.
    stream.emulator.control("POST", "clock", {"frozen_at": now - 60})
    assert stream.send("account-enabled", sub=stream.world.user.google_sub)["status"] == 202
    assert connection(stream.app, conn_id).held_at is not None
    stream.emulator.control("POST", "clock", {"frozen_at": now + 60})
    assert stream.send("account-enabled", sub=stream.world.user.google_sub)["status"] == 202
    assert connection(stream.app, conn_id).held_at is None
    assert stream.world.token().status_code == 200


def test_credential_change_ends_sessions_only_under_the_policy(stream: Stream) -> None:
    browser = signed_in(stream.app, stream.world.user)
    sub = stream.world.user.google_sub
    assert stream.send("account-credential-change-required", sub=sub)["status"] == 202
    assert browser.get("/connections").status_code == 200
    assert len(audited(stream.app, "risc.account-credential-change-required")) == 1
    with get_db(stream.app).transaction() as session:
        policy = session.get(Policy, stream.world.tenant.id)
        assert policy is not None
        policy.end_sessions_on_credential_change = True
    assert stream.send("account-credential-change-required", sub=sub)["status"] == 202
    assert browser.get("/connections").status_code != 200


def test_verification_records_its_state(stream: Stream) -> None:
    answer = stream.send("verification", state="hello-there")
    assert answer["status"] == 202
    (row,) = events(stream.app)
    assert (row.kind, row.outcome, row.detail) == ("verification", "acted", "hello-there")


def test_unknown_type_and_unknown_user_are_accepted_and_ignored(stream: Stream) -> None:
    assert stream.send("https://example.com/event-type/new", sub="x")["status"] == 202
    assert stream.send("sessions-revoked", sub="nobody-we-know")["status"] == 202
    assert [(e.kind, e.outcome) for e in events(stream.app)] == [
        ("unknown", "ignored"), ("sessions-revoked", "ignored")]


def test_a_repeated_jti_is_accepted_once(stream: Stream) -> None:
    sub = stream.world.user.google_sub
    first = stream.send("sessions-revoked", sub=sub)
    again = stream.send("sessions-revoked", sub=sub, fault="repeat_jti")
    assert (first["status"], again["status"]) == (202, 202)
    assert first["jti"] == again["jti"]
    assert len(events(stream.app)) == 1


def test_an_event_with_a_past_exp_is_accepted(stream: Stream) -> None:
    answer = stream.send("tokens-revoked", sub=stream.world.user.google_sub, fault="expired")
    assert answer["status"] == 202
    assert stream.world.connection is not None
    assert connection(stream.app, stream.world.connection.id).status == "needs_reauth"


def test_legacy_token_event_uris_are_understood(stream: Stream) -> None:
    answer = stream.send("tokens-revoked", sub=stream.world.user.google_sub, fault="legacy_uri")
    assert answer["status"] == 202
    assert events(stream.app)[0].kind == "tokens-revoked"
    assert stream.world.connection is not None
    assert connection(stream.app, stream.world.connection.id).status == "needs_reauth"

