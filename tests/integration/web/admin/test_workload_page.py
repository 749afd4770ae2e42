"""The "Workload trust" admin page: add and disable through the same service, CSRF, tenancy."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask

from broker.db import get_db
from broker.tenancy import clients
from broker.workload import trusts
from tests.integration.web.admin.conftest import READONLY, Browser, Org

ISSUER = "https://token.actions.githubusercontent.com"


def test_the_page_adds_refuses_readably_and_stays_in_its_tenant(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    with get_db(admin_app).transaction() as session:
        mine = clients.create_client(session, org.tenant, name="job", scopes=[READONLY])
        theirs = clients.create_client(session, other.tenant, name="job", scopes=[READONLY])
        foreign = trusts.add_trust(session, other.tenant, trusts.TrustSpec(
            client_id=theirs.client_id, issuer=ISSUER, any_subject=True, any_user=True),
            default_audience="https://broker.test", now=dt.datetime.now(dt.UTC))
        foreign_id = str(foreign.id)
    form = {"client_id": mine.client_id, "issuer": ISSUER, "subject": "*",
            "claims": "repository_id=42\nref=refs/heads/main", "users": "mia@acme.test"}
    assert as_admin.post("/admin/workload", form, csrf=False).status_code == 403
    bad = as_admin.post("/admin/workload", {**form, "claims": "repository_id"})
    assert bad.status_code == 400 and "Not added: a claim condition is NAME=VALUE" in bad.text
    assert ">mia@acme.test</textarea>" in bad.text  # the form comes back as typed
    # Another tenant's client is as absent as a made-up one.
    assert as_admin.post("/admin/workload", {**form, "client_id": theirs.client_id}
                         ).status_code == 400
    assert as_admin.post("/admin/workload", form).status_code == 303
    page = as_admin.get("/admin/workload").text
    assert "repository_id=42" in page and foreign_id not in page
    assert as_admin.post(f"/admin/workload/{foreign_id}/disable").status_code == 404


def test_the_clients_page_registers_a_keyed_client(admin_app: Flask, org: Org,
                                                   as_admin: Browser) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    form = {"name": "keyed", "scopes": [READONLY], "auth": "private_key_jwt"}
    refused = as_admin.post("/admin/clients", form)
    assert refused.status_code == 400 and "exactly one of a public key" in refused.text
    created = as_admin.post("/admin/clients", {**form, "public_key": pem})
    assert created.status_code == 303
    page = as_admin.get(created.headers["Location"]).text
    assert "private_key_jwt" in page and "signs its assertions with its own key" in page
