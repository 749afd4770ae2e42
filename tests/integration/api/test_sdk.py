"""The SDK: BrokerClient refusals by class, BrokerCredentials driving google-api-python-client."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from googleapiclient.discovery import build

from broker.client import (
    BrokerClient,
    BrokerCredentials,
    InvalidClientError,
    ReauthRequiredError,
    UnknownUserError,
)
from tests.plugins.world import READONLY, World


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
