"""Drive the broker (Flask test client) and the emulator (real HTTP) like one browser."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from flask import Flask
from sqlalchemy import select
from werkzeug.test import TestResponse

from broker.db import get_db
from broker.models import AuditEvent
from tests.integration.emulator.support import parse_forms

PUBLIC_URL = "http://127.0.0.1:8080"
CLIENT_ID = "broker-web-tests.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-broker-web-tests"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
LABELS = "https://www.googleapis.com/auth/gmail.labels"
REDIRECTS = (301, 302, 303, 307, 308)


class WebBrowser:
    """One person's browser: a cookie jar for the broker and another for Google."""

    def __init__(self, app: Flask, remote_addr: str = "127.0.0.1") -> None:
        self.app = app
        self.broker = app.test_client()
        self.google = requests.Session()
        self.environ = {"REMOTE_ADDR": remote_addr}
        self.public_url = app.config["BROKER"].PUBLIC_URL
        self.history: list[str] = []

    def _is_broker(self, url: str) -> bool:
        return url.startswith("/") or url.startswith(self.public_url)

    def get(self, url: str) -> Any:
        """Fetch one URL from whichever site it names, without following redirects."""
        self.history.append(url)
        if self._is_broker(url):
            full = url if url.startswith("http") else self.public_url + url
            return self.broker.get(full, environ_base=self.environ)
        return self.google.get(url, allow_redirects=False, timeout=10)

    def post(self, url: str, data: dict[str, str] | None = None) -> TestResponse:
        """Post a form to the broker."""
        return self.broker.post(self.public_url + url, data=data or {}, environ_base=self.environ)

    def follow(self, response: Any, *, max_hops: int = 10) -> Any:
        """Follow redirects across both sites until a page answers."""
        for _ in range(max_hops):
            status = getattr(response, "status_code", 0)
            if status not in REDIRECTS:
                return response
            response = self.get(response.headers["Location"])
        raise AssertionError("too many redirects")

    def open(self, url: str) -> Any:
        """GET a URL and follow its redirects."""
        return self.follow(self.get(url))

    def csrf(self, path: str = "/connections") -> str:
        """Return the CSRF token from a page's forms."""
        page = self.broker.get(self.public_url + path, environ_base=self.environ)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert match, page.get_data(as_text=True)[:500]
        return match.group(1)

    def google_page_click(self, page: requests.Response, label: str, *,
                          untick: tuple[str, ...] = (), fill: dict[str, str] | None = None) -> Any:
        """Press a button on an emulator page (chooser or consent) and follow on."""
        for form in parse_forms(page.text):
            for name, value, text in form.buttons:
                if label not in (text, value):
                    continue
                data = [(n, (fill or {}).get(n, v)) for n, v in form.fields]
                data += [(n, v) for n, v, on in form.checkboxes if on and v not in untick]
                if name:
                    data.append((name, value or ""))
                target = requests.compat.urljoin(page.url, form.action)
                answer = self.google.post(target, data=data, allow_redirects=False, timeout=10)
                return self.follow(answer)
        raise AssertionError(f"no button {label!r}")


def text(response: Any) -> str:
    """Return a response's body as text, for either site."""
    if isinstance(response, requests.Response):
        return response.text
    return str(response.get_data(as_text=True))


def query(url: str) -> dict[str, str]:
    """Return a URL's query, one value per name."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def events(app: Flask, action: str) -> list[AuditEvent]:
    """Return one action's audit events in insertion order (a test clock may stamp alike)."""
    with get_db(app).transaction(write=False) as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        ))


def reasons(app: Flask, action: str) -> list[str | None]:
    """Return the reasons of one action's audit events."""
    return [e.reason for e in events(app, action)]
