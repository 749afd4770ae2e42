"""Certificate clients from the admin page: created with no secret, shown with their rule."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from broker.db import get_db
from broker.emulator.pki import issue
from broker.models import ApiClient
from tests.integration.web.admin.conftest import READONLY, Browser, Org


def test_a_tls_client_auth_client_is_created_without_a_secret(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    ca = issue("Acme jobs CA", ca=True)
    answer = as_admin.post("/admin/clients", {
        "name": "mailer", "scopes": READONLY, "auth": "tls_client_auth",
        "tls_ca": ca.pem().decode(), "tls_match": "san_uri",
        "tls_match_value": "spiffe://acme/mailer", "tls_cert": "ignored for this method"})
    assert answer.status_code == 303 and "/secret" not in answer.headers["Location"]
    page = as_admin.get(answer.headers["Location"]).get_data(as_text=True)
    assert "authenticates with its certificate" in page
    assert "<code>tls_client_auth</code>: a certificate from <code>CN=Acme jobs CA" in page
    assert "spiffe://acme/mailer" in page and "Rotate the secret" not in page
    with get_db(admin_app).transaction(write=False) as session:
        row = session.scalars(select(ApiClient).where(ApiClient.name == "mailer")).one()
    assert (row.auth_method, row.tls_match) == ("tls_client_auth", "san_uri")


def test_pinned_certificates_are_read_from_the_pasted_text(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    one, two = issue("job-a", ca=True), issue("job-b", ca=True)
    answer = as_admin.post("/admin/clients", {
        "name": "cron", "scopes": READONLY, "auth": "self_signed_tls_client_auth",
        "tls_cert": one.pem().decode() + "\n\n" + two.pem().decode()})
    assert answer.status_code == 303
    with get_db(admin_app).transaction(write=False) as session:
        row = session.scalars(select(ApiClient).where(ApiClient.name == "cron")).one()
    assert len(row.tls_certificates) == 2


def test_a_bad_ca_comes_back_with_the_form_as_typed(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    answer = as_admin.post("/admin/clients", {
        "name": "mailer", "scopes": READONLY, "auth": "tls_client_auth",
        "tls_ca": "not a certificate", "tls_match": "san_dns", "tls_match_value": "m.acme"})
    body = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "Not created: the client CA is not a PEM" in body
    assert 'value="m.acme"' in body and "not a certificate</textarea>" in body
    assert '<option value="tls_client_auth" selected>' in body


def test_a_webhook_with_a_client_certificate_from_the_page(
    admin_app: Flask, org: Org, as_admin: Browser
) -> None:
    ca = issue("hooks client CA", ca=True)
    cert = issue("broker", issuer=ca, hosts=("broker.acme.test",), client=True)
    form = {"url": "https://hooks.acme.test/gmail", "events": "connection.needs_reauth",
            "client_cert": cert.pem().decode(), "client_key": ca.key_pem().decode()}
    refused = as_admin.post("/admin/webhooks", form)
    body = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "key does not match" in body
    assert "PRIVATE KEY" not in body  # the typed key never comes back in the page
    form["client_key"] = cert.key_pem().decode()
    assert as_admin.post("/admin/webhooks", form).status_code == 303
    page = as_admin.get("/admin/certificates").get_data(as_text=True)
    assert "Webhook client certificate" in page and "https://hooks.acme.test/gmail" in page
