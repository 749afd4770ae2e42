"""Fixtures of the emulator's tests: a registered OAuth client and a browser."""

from __future__ import annotations

import pytest

from tests.integration.emulator.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    Browser,
    OAuthClient,
)
from tests.plugins.emulator import EmulatorControls


@pytest.fixture
def oauth_client(emulator: EmulatorControls) -> OAuthClient:
    """Register the test client (clients survive resets, so this is idempotent)."""
    emulator.add_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI, REDIRECT_URI + "/other"])
    return OAuthClient()


@pytest.fixture
def browser(emulator: EmulatorControls) -> Browser:
    """A fresh browser pointed at the emulator."""
    return Browser(emulator.url)
