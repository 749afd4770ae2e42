"""Helpers for the emulator's tests: the test client, a form-posting browser, token calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

from tests.plugins.emulator import EmulatorControls

CLIENT_ID = "emulator-tests.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-emulator-tests"
REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_LABELS = "https://www.googleapis.com/auth/gmail.labels"
EMAIL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
NO_CACHE = "no-cache, no-store, max-age=0, must-revalidate"


@dataclass
class OAuthClient:
    """The credentials of the client the tests register."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    redirect_uri: str = REDIRECT_URI

    def creds(self) -> dict[str, str]:
        """Return the form fields that authenticate this client."""
        return {"client_id": self.client_id, "client_secret": self.client_secret}


@dataclass
class Form:
    """One HTML form: where it posts, its fields and its submit buttons."""

    action: str
    id: str | None
    fields: list[tuple[str, str]] = field(default_factory=list)
    checkboxes: list[tuple[str, str, bool]] = field(default_factory=list)
    buttons: list[tuple[str | None, str | None, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._button: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append(Form(a.get("action") or "", a.get("id")))
        elif tag == "input" and self.forms and a.get("name"):
            name, value = str(a["name"]), a.get("value") or ""
            if a.get("type") == "checkbox":
                self.forms[-1].checkboxes.append((name, value, "checked" in a))
            else:
                self.forms[-1].fields.append((name, value))
        elif tag == "button" and self.forms:
            self._button = [a.get("name"), a.get("value"), ""]

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            name, value, text = self._button
            self.forms[-1].buttons.append((name, value, " ".join(text.split())))
            self._button = None


def parse_forms(html: str) -> list[Form]:
    """Return the forms of a page."""
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class Browser:
    """A cookie-keeping client that reads the emulator's pages and clicks their buttons."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.page: requests.Response | None = None

    def open(self, url: str, **params: str) -> requests.Response:
        """GET a URL without following redirects."""
        if params:
            url = f"{url}?{urlencode(params)}"
        self.page = self.session.get(url, allow_redirects=False, timeout=10)
        return self.page

    def authorize(self, client: OAuthClient, scope: str, **params: str) -> requests.Response:
        """Start an authorization request."""
        query = {
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "response_type": "code",
            "scope": scope,
            **params,
        }
        return self.open(f"{self.base_url}/o/oauth2/v2/auth", **query)

    def forms(self) -> list[Form]:
        """Return the current page's forms."""
        assert self.page is not None and self.page.status_code == 200, self.page
        return parse_forms(self.page.text)

    def click(
        self, label: str, *, fill: dict[str, str] | None = None, untick: tuple[str, ...] = ()
    ) -> requests.Response:
        """Press the button whose text or value is `label`, as a browser would submit it."""
        for form in self.forms():
            for name, value, text in form.buttons:
                if label not in (text, value):
                    continue
                data = [(n, (fill or {}).get(n, v)) for n, v in form.fields]
                data += [(n, v) for n, v, on in form.checkboxes if on and v not in untick]
                if name:
                    data.append((name, value or ""))
                url = urljoin(self.page.url if self.page else self.base_url, form.action)
                self.page = self.session.post(url, data=data, allow_redirects=False, timeout=10)
                return self.page
        raise AssertionError(f"no button {label!r} on the page")

    def choose(self, email: str) -> requests.Response:
        """Pick an account on the chooser (typing it when it has no button yet)."""
        buttons = [v for f in self.forms() for _, v, _ in f.buttons]
        if email in buttons:
            return self.click(email)
        return self.click("Continue", fill={"email": email})


def redirect_params(response: requests.Response) -> dict[str, str]:
    """Return the query of a redirect to the client, one value per name."""
    assert response.status_code == 302, (response.status_code, response.text[:500])
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(
    emulator: EmulatorControls, client: OAuthClient, code: str, **extra: str
) -> requests.Response:
    """Post an authorization-code exchange."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": client.redirect_uri,
        **client.creds(),
        **extra,
    }
    return requests.post(f"{emulator.url}/token", data=data, timeout=10)


def refresh(
    emulator: EmulatorControls, client: OAuthClient, token: str, **extra: str
) -> requests.Response:
    """Post a refresh-token grant."""
    data = {"grant_type": "refresh_token", "refresh_token": token, **client.creds(), **extra}
    return requests.post(f"{emulator.url}/token", data=data, timeout=10)
