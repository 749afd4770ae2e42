"""A page that needs a data key while KMS is down answers 503, stores nothing, then recovers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.keys import get_keys
from broker.models import Connection
from tests.factories import make_tenant
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import WebBrowser, text
from tests.plugins.emulator import EmulatorControls
from tests.plugins.keyservices import Moto


@pytest.fixture
def kms(moto: Moto) -> Iterator[Moto]:
    """moto, serving again after the test whatever it stopped."""
    yield moto
    if not moto.serving:
        moto.start()


def test_connecting_while_kms_is_down_answers_503_and_stores_nothing(
    make_google_app: Callable[..., Flask], emulator: EmulatorControls, kms: Moto
) -> None:
    app = make_google_app(MASTER_KEYS=kms.new_key(), KEY_SERVICE_TIMEOUT=2)
    make_tenant(app, "acme", domains=("acme.test",), admin="admin@acme.test")
    emulator.add_account("alice@acme.test", hd="acme.test", name="Alice")
    browser = WebBrowser(app)
    sign_in(browser, emulator, "alice@acme.test")
    get_keys(app).forget()  # a process that has not unwrapped acme's data key yet
    kms.stop()
    # Starting the connect already seals (the PKCE verifier of the transaction): refused there.
    page = browser.get("/connections/connect?scope=gmail.readonly")
    assert page.status_code == 503, text(page)[:300]
    assert "key_service_unavailable" in text(page) and page.headers["Retry-After"] == "5"
    with get_db(app).transaction(write=False) as session:
        assert session.scalar(select(Connection)) is None
    kms.start()
    emulator.settings(auto_consent=True)
    try:
        answer = browser.get("/connections/connect?scope=gmail.readonly")
        back = browser.open(answer.headers["Location"])
    finally:
        emulator.settings(auto_consent=None)
    assert back.status_code == 200 and "Gmail is connected." in text(back)
