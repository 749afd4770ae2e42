"""The certificate inventory: the admin page, the overview's warning, the CLI and /metrics."""

from __future__ import annotations

import datetime as dt
import json

from click.testing import CliRunner
from flask import Flask
from flask.cli import ScriptInfo

from broker.cli import cli
from broker.db import get_db
from broker.emulator.pki import issue
from broker.keys import get_keys
from broker.models import Tenant
from broker.tenancy import clients
from broker.webhooks import add
from tests.integration.api.test_mtls import _client_leaf
from tests.integration.web.admin.conftest import Browser, Org

NOW = dt.datetime.now(dt.UTC)


def _register(app: Flask, org: Org, other: Org) -> None:
    soon_ca = issue("Acme soon CA", ca=True,
                    not_after=NOW + dt.timedelta(days=10))
    later_ca = issue("Acme later CA", ca=True, not_after=NOW + dt.timedelta(days=365))
    hook_cert = _client_leaf(later_ca, cn="hooks", days=200)
    with get_db(app).transaction() as session:
        for name, ca in (("a", soon_ca), ("b", later_ca)):
            tenant = session.get(Tenant, org.tenant.id)
            assert tenant is not None
            clients.create_client(session, tenant, name=name, scopes=["gmail.readonly"],
                                  auth=clients.ClientAuth("tls_client_auth", ca.pem().decode(),
                                                          "san_dns", f"{name}.acme.test"))
        add(session, get_keys(app), org.tenant.id, url="https://hooks.acme.test/x", events=None,
            allow_private=False, actor="t", client_cert=hook_cert.pem().decode(),
            client_key=hook_cert.key_pem())
        theirs = session.get(Tenant, other.tenant.id)
        assert theirs is not None
        globex_ca = issue("Globex CA", ca=True, not_after=NOW + dt.timedelta(days=90))
        clients.create_client(session, theirs, name="g", scopes=["gmail.readonly"],
                              auth=clients.ClientAuth("tls_client_auth", globex_ca.pem().decode(),
                                                      "san_dns", "g.globex.test"))


def test_the_page_lists_the_tenants_certificates_soonest_first(
    admin_app: Flask, org: Org, other: Org, as_admin: Browser
) -> None:
    _register(admin_app, org, other)
    body = as_admin.get("/admin/certificates").get_data(as_text=True)
    soon, later = body.index("CN=Acme soon CA"), body.index("CN=Acme later CA")
    assert soon < later and "Webhook client certificate" in body
    assert "https://hooks.acme.test" in body
    assert "Globex" not in body  # another tenant's CA is not this admin's
    assert body.count('class="warn"') == 1 and "days left" in body
    overview = as_admin.get("/admin/overview").get_data(as_text=True)
    assert 'id="certificates-expiring"' in overview and "CN=Acme soon CA" in overview


def test_cli_lists_every_tenant_and_metrics_expose_the_expiry(
    admin_app: Flask, org: Org, other: Org
) -> None:
    _register(admin_app, org, other)
    app = ScriptInfo(create_app=lambda: admin_app)  # the test's app: its pool is disposed
    result = CliRunner().invoke(cli, ["certs", "list", "--json"], obj=app, prog_name="broker")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)  # stdout alone: a log line may go to stderr
    assert [e["tenant"] for e in listed].count("globex") == 1
    assert {e["kind"] for e in listed} == {"client_ca", "webhook_client"}
    one = CliRunner().invoke(cli, ["certs", "list", "--tenant", "globex"], obj=app,
                             prog_name="broker")
    assert one.exit_code == 0 and "CN=Globex CA" in one.output and "Acme" not in one.output
    scraped = admin_app.test_client().get("/metrics").get_data(as_text=True)
    line = next(x for x in scraped.splitlines() if x.startswith(
        'broker_certificate_expiry_seconds{kind="client_ca",name="acme/CN=Acme soon CA'))
    assert 8 * 86400 < float(line.rsplit(" ", 1)[1]) < 11 * 86400
