"""/metrics: guarded by IP range or bearer token; gauges read from the database."""

from __future__ import annotations

from tests.factories import make_connection, make_tenant, make_user

READ = "https://www.googleapis.com/auth/gmail.readonly"


def test_loopback_may_read_and_gauges_follow_the_database(app) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant(app)
    make_connection(app, make_user(app, tenant), scopes=[READ])
    make_connection(app, make_user(app, tenant), scopes=[READ], status="needs_reauth")
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'broker_connections{status="active"} 1.0' in text
    assert 'broker_connections{status="needs_reauth"} 1.0' in text
    assert "broker_handouts_total" in text


def test_other_addresses_need_the_bearer_token(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(METRICS_TOKEN="metrics-secret-value", METRICS_IP_RANGES="10.0.0.0/8")
    client = app.test_client()
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-value"})
    assert ok.status_code == 200
    assert "metrics-secret-value" not in ok.get_data(as_text=True)
    inside = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert inside.status_code == 200


def test_forged_forwarding_headers_do_not_open_metrics(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(METRICS_IP_RANGES="127.0.0.0/8")
    response = app.test_client().get(
        "/metrics", environ_base={"REMOTE_ADDR": "203.0.113.5"},
        headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"},
    )
    assert response.status_code == 403


def test_an_unparsable_hop_from_a_trusted_proxy_does_not_open_metrics(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(METRICS_IP_RANGES="127.0.0.0/8", TRUSTED_PROXIES="127.0.0.1/32")
    client = app.test_client()
    for hop in ("unknown", "_hidden", "203.0.113.5:4444x", "203.0.113.5, unknown"):
        response = client.get("/metrics", headers={"X-Forwarded-For": hop})
        assert response.status_code == 403, hop
    outside = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5:4444"})
    assert outside.status_code == 403
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.9:80"}).status_code == 200
