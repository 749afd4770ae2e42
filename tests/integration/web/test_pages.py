"""Page safety over every route of the URL map: headers, CSRF, 405s, no 500, clean URLs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from broker.db import get_db
from broker.models import Base
from broker.web.guard import safe_next
from tests.integration.web.conftest import sign_in
from tests.integration.web.support import PUBLIC_URL, WebBrowser, text
from tests.plugins.emulator import EmulatorControls

# Routes that may write on GET: they start a sign-in or connect transaction (DESIGN §6).
TRANSACTION_STARTS = {"/auth/login", "/connections/connect"}
JSON_PATHS = ("/api/", "/healthz", "/readyz", "/metrics", "/risc/")
# POSTs authenticated by their own signature (Google's security events): no session, no CSRF.
SIGNED_POSTS = {"/risc/events"}
OTHER_METHODS = ("PUT", "PATCH", "DELETE")


def _routes(app: Flask) -> Iterator[tuple[str, set[str], str]]:
    for rule in app.url_map.iter_rules():
        if rule.arguments or rule.endpoint == "static":
            continue
        yield rule.rule, set(rule.methods or ()) - {"HEAD", "OPTIONS"}, rule.endpoint


def _counts(app: Flask) -> dict[str, int]:
    with get_db(app).transaction(write=False) as session:
        return {
            t.name: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def _assert_headers(path: str, response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert "default-src 'self'" in headers["Content-Security-Policy"], path
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
    assert headers["X-Content-Type-Options"] == "nosniff", path
    assert headers["Referrer-Policy"] == "no-referrer", path
    assert "charset=utf-8" in headers["Content-Type"] or headers["Content-Type"].startswith(
        "application/json"), (path, headers["Content-Type"])


@pytest.mark.parametrize("who", ["nobody", "member", "admin"])
def test_every_get_route_is_safe(
    who: str, signed_in: WebBrowser, google_app: Flask, emulator: EmulatorControls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    browser = {"nobody": WebBrowser(google_app), "member": signed_in}.get(who)
    if browser is None:
        browser = WebBrowser(google_app)
        emulator.add_account("admin@acme.test", hd="acme.test")
        sign_in(browser, emulator, "admin@acme.test")
    caplog.set_level(logging.INFO)
    for path, methods, _ in _routes(google_app):
        if "GET" not in methods:
            continue
        before = _counts(google_app)
        response = browser.get(path)
        assert response.status_code < 500, path
        _assert_headers(path, response)
        if path not in TRANSACTION_STARTS:
            after = _counts(google_app)
            assert after == before, (path, before, after)
        location = response.headers.get("Location", "")
        assert "code=" not in location and "token" not in location, path


def test_every_post_route_needs_csrf(signed_in: WebBrowser, google_app: Flask) -> None:
    posts = [path for path, methods, _ in _routes(google_app)
             if "POST" in methods and not path.startswith("/api/") and path not in SIGNED_POSTS]
    assert "/auth/logout" in posts and "/connections/disconnect" in posts
    for path in posts:
        before = _counts(google_app)
        refused = signed_in.post(path)
        assert refused.status_code == 403, path
        assert "csrf_failed" in text(refused), path
        _assert_headers(path, refused)
        wrong = signed_in.post(path, {"csrf_token": "0" * 64})
        assert wrong.status_code == 403, path
        assert _counts(google_app) == before, path


def test_undocumented_methods_get_405(signed_in: WebBrowser, google_app: Flask) -> None:
    for path, methods, _ in _routes(google_app):
        for method in OTHER_METHODS:
            if method in methods:
                continue
            response = signed_in.broker.open(PUBLIC_URL + path, method=method)
            assert response.status_code == 405, (method, path)
            assert response.headers["Allow"], path
            _assert_headers(path, response)
            if path.startswith(JSON_PATHS):
                assert response.is_json, path
            else:
                assert "Method not allowed" in text(response), path


def test_friendly_404(google_app: Flask) -> None:
    page = WebBrowser(google_app).get("/no/such/page")
    assert page.status_code == 404 and "Page not found" in text(page)
    api = WebBrowser(google_app).get("/api/v1/nothing")
    assert api.status_code == 404 and api.json["error"] == "not_found"


def test_canonical_host_redirect(google_app: Flask) -> None:
    client = google_app.test_client()
    page = client.get("http://broker.alias.test/connections?x=1")
    assert page.status_code == 302
    assert page.headers["Location"] == PUBLIC_URL + "/connections?x=1"
    callback = client.get("http://broker.alias.test/auth/callback?code=4/secret&state=s")
    assert callback.headers["Location"] == PUBLIC_URL + "/auth/callback"
    assert client.get("http://broker.alias.test/healthz").status_code == 200


def test_https_cookies_and_hsts(
    make_google_app: Callable[..., Flask], emulator: EmulatorControls
) -> None:
    from broker.keys.extension import get_keys
    from broker.tenancy.tenants import create_tenant

    app = make_google_app("https://broker.example.com")
    with get_db(app).transaction() as session:
        create_tenant(session, get_keys(app), slug="acme", name="Acme", domains=["acme.test"],
                      admin_email="admin@acme.test")
    emulator.add_account("alice@acme.test", hd="acme.test")
    browser = WebBrowser(app)
    assert browser.get("/").headers["Strict-Transport-Security"].startswith("max-age=31536000")
    start = browser.get("/auth/login")
    binding = " ".join(start.headers.getlist("Set-Cookie"))
    assert binding.startswith("__Host-broker_binding=") and "Secure" in binding
    emulator.settings(auto_consent="alice@acme.test")
    done = browser.get(browser.get(start.headers["Location"]).headers["Location"])
    emulator.settings(auto_consent=None)
    cookie = next(h for h in done.headers.getlist("Set-Cookie") if "broker_session" in h)
    assert cookie.startswith("__Host-broker_session=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie


def test_no_code_or_token_in_logs_or_urls(
    signed_in: WebBrowser, emulator: EmulatorControls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.settings(auto_consent=True)
    to_google = signed_in.get("/connections/connect?scope=gmail.readonly")
    callback = signed_in.get(to_google.headers["Location"]).headers["Location"]
    emulator.settings(auto_consent=None)
    done = signed_in.get(callback)
    assert done.status_code == 303 and done.headers["Location"] == "/connections"
    code = callback.split("code=")[1].split("&")[0]
    page = text(signed_in.get("/connections"))
    for secret in (code, "ya29.", "1//"):
        assert secret not in caplog.text and secret not in page


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/connections", "/connections"), ("//evil.test", None), ("/\\evil.test", None),
     ("https://evil.test/", None), ("connections", None), ("/a\r\nb", None), (None, None),
     ("/x:y", None)],
)
def test_next_is_local_only(value: str | None, expected: str | None) -> None:
    assert safe_next(value) == expected
