"""The SDK: BrokerClient refusals by class, BrokerCredentials driving google-api-python-client."""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from flask import Flask
from googleapiclient.discovery import build
from sqlalchemy import update

from broker.client import (
    ERRORS,
    BrokerAPIError,
    BrokerClient,
    BrokerCredentials,
    BrokerUnavailableError,
    DatabaseUnavailableError,
    InvalidClientError,
    LoginRequiredError,
    NotConnectedError,
    ReauthRequiredError,
    ScopeNotGrantedError,
    UnknownUserError,
)
from broker.clock import utcnow
from broker.db import get_db
from broker.models import Connection, Policy
from tests.conftest import Clock
from tests.plugins.world import MODIFY, PUBLIC_URL, READONLY, World
from tests.ports import free_port


def sdk(world: World, secret: str | None = None) -> BrokerClient:
    """A BrokerClient talking to the app over an in-process WSGI transport."""
    http = httpx.Client(transport=httpx.WSGITransport(app=world.app,
                                                      remote_addr="203.0.113.7"))
    return BrokerClient("http://broker.test", world.client_id, secret or world.client_secret,
                        http=http)


def test_token_and_refusals_by_class(world: World) -> None:
    client = sdk(world)
    token = client.token(world.user.email, scopes=["gmail.readonly"])
    assert READONLY in token.scopes and token.expires_in > 3000
    assert token.access_token not in repr(token)
    with pytest.raises(UnknownUserError) as refused:
        client.token("nobody@x.test")
    assert refused.value.status == 404
    with pytest.raises(InvalidClientError):
        sdk(world, "wrong").token(world.user.email)


def test_credentials_read_the_gmail_profile_and_recover_from_a_401(world: World) -> None:
    creds = BrokerCredentials(sdk(world), world.user.email, scopes=[READONLY])
    gmail = build("gmail", "v1", credentials=creds, cache_discovery=False,
                  static_discovery=True, client_options={"api_endpoint": world.emulator.url})
    profile = gmail.users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == world.user.email
    assert isinstance(creds.expiry, dt.datetime) and creds.expiry.tzinfo is None
    first = creds.token
    world.emulator.expire(world.user.email)  # Google now refuses the token the broker holds
    again = gmail.users().getProfile(userId="me").execute()
    assert again["emailAddress"] == world.user.email and creds.token != first
    assert world.emulator.calls()["token"]["refresh_token"] == 2


def test_credentials_surface_reauth_as_refresh_error(world: World) -> None:
    from google.auth.exceptions import RefreshError

    world.emulator.revoke_account(world.user.email)
    creds = BrokerCredentials(sdk(world), world.user.email)
    with pytest.raises(RefreshError) as raised:
        creds.refresh(None)
    assert isinstance(raised.value.__cause__, ReauthRequiredError)


def test_refusals_carry_their_urls_as_attributes(
    make_world: Callable[..., World], world: World, clock: Clock
) -> None:
    bare = make_world(connected=False)
    with pytest.raises(NotConnectedError) as not_connected:
        sdk(bare).token(bare.user.email)
    assert not_connected.value.connect_url is not None
    assert not_connected.value.connect_url.startswith(PUBLIC_URL + "/connections/connect?scope=")

    narrow = make_world(granted=[READONLY], allowed=[READONLY, MODIFY])
    with pytest.raises(ScopeNotGrantedError) as not_granted:
        sdk(narrow).token(narrow.user.email, scopes=["gmail.modify"])
    assert "gmail.modify" in (not_granted.value.consent_url or "")

    with get_db(world.app).transaction() as session:
        session.execute(
            update(Connection).where(Connection.user_id == world.user.id)
            .values(status="needs_reauth", status_reason="reauth_policy")
        )
    with pytest.raises(ReauthRequiredError) as reauth:
        sdk(world).token(world.user.email)
    assert reauth.value.reason == "reauth_policy"
    assert (reauth.value.reauth_url or "").startswith(PUBLIC_URL + "/connections/connect?")

    clock.now = utcnow() + dt.timedelta(minutes=61)  # the user signed in over an hour ago
    world.app.extensions["broker.clock"] = clock
    with get_db(world.app).transaction() as session:
        session.execute(update(Policy).where(Policy.tenant_id == world.tenant.id)
                        .values(handout_login_max_age=3600))
    with pytest.raises(LoginRequiredError) as login:
        sdk(world).token(world.user.email)
    assert login.value.login_url == PUBLIC_URL + "/auth/login"


def test_a_database_outage_raises_its_own_class(make_app: Callable[..., Flask]) -> None:
    app = make_app(DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    http = httpx.Client(transport=httpx.WSGITransport(app=app, remote_addr="203.0.113.7"))
    with pytest.raises(DatabaseUnavailableError) as raised:
        BrokerClient("http://broker.test", "a-client", "a-secret", http=http).token("a@b.test")
    assert raised.value.status == 503 and raised.value.error == "database_unavailable"
    assert raised.value.retry_after is not None


def test_a_broker_nobody_listens_on_raises_broker_unavailable() -> None:
    client = BrokerClient(f"http://127.0.0.1:{free_port()}", "a-client", "a-secret")
    with pytest.raises(BrokerUnavailableError) as raised:
        client.token("alice@acme.test")
    assert isinstance(raised.value, BrokerAPIError) and raised.value.status == 0
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert "a-secret" not in str(raised.value)


def test_a_broker_that_never_answers_raises_broker_unavailable() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = BrokerClient(f"http://127.0.0.1:{port}", "a-client", "a-secret", timeout=0.2)
        with pytest.raises(BrokerUnavailableError) as raised:
            client.token("alice@acme.test")
    assert isinstance(raised.value.__cause__, httpx.TimeoutException)


def test_every_code_in_the_readme_has_its_class() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    codes = set(re.findall(r"^\| \d{3} \| `(\w+)` \|", readme, re.MULTILINE))
    assert "database_unavailable" in codes
    assert codes == set(ERRORS)
    assert all(ERRORS[code].error == code and ERRORS[code].__name__.endswith("Error")
               for code in codes)
