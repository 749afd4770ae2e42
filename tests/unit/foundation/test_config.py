"""Typed settings: sources in order, every problem reported at once."""

from __future__ import annotations

import ipaddress

import pytest

from broker.config import ConfigError, load_settings


def test_defaults_and_types() -> None:
    settings = load_settings({}, environ={})
    assert settings.PUBLIC_URL == "http://127.0.0.1:8080"
    assert settings.REFRESH_BUDGET == 10.0
    assert settings.database_url.endswith("broker.db")
    assert ipaddress.ip_network("::1/128") in settings.METRICS_IP_RANGES


def test_environment_is_parsed_by_type_not_json() -> None:
    settings = load_settings(
        {}, environ={"BROKER_GOOGLE_CLIENT_ID": "123456", "BROKER_GOOGLE_CLIENT_SECRET": "x",
                     "BROKER_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"}
    )
    assert settings.GOOGLE_CLIENT_ID == "123456"
    assert [str(n) for n in settings.TRUSTED_PROXIES] == ["10.0.0.1/32", "192.168.0.0/16"]


def test_order_instance_file_then_env_then_mapping(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.py").write_text("REFRESH_BUDGET = 3\nBROKER_LOG_LEVEL = 'DEBUG'\n")
    env = {"BROKER_INSTANCE_PATH": str(tmp_path), "BROKER_REFRESH_BUDGET": "4"}
    assert load_settings({}, environ=env).REFRESH_BUDGET == 4.0
    assert load_settings({}, environ=env).LOG_LEVEL == "DEBUG"
    assert load_settings({"REFRESH_BUDGET": 5}, environ=env).REFRESH_BUDGET == 5.0


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "BROKER_REFRESH_BUDGET": "soon",
        "BROKER_TRUSTED_PROXIES": "not-a-cidr",
        "BROKER_PUBLIC_URL": "http://broker.example.com",
        "BROKER_GOOGLE_DISCOVERY_URL": "http://evil.example.com/.well-known",
        "BROKER_GOOGLE_CLIENT_ID": "only-the-id",
    }
    with pytest.raises(ConfigError) as info:
        load_settings({}, environ=env)
    text = str(info.value)
    for name in ("REFRESH_BUDGET", "TRUSTED_PROXIES"):
        assert f"BROKER_{name}" in text
    env["BROKER_REFRESH_BUDGET"] = "5"
    env["BROKER_TRUSTED_PROXIES"] = ""
    with pytest.raises(ConfigError) as info:
        load_settings({}, environ=env)
    problems = info.value.problems
    assert any("PUBLIC_URL" in p for p in problems)
    assert any("GOOGLE_DISCOVERY_URL" in p for p in problems)
    assert any("GOOGLE_CLIENT_ID" in p for p in problems)


def test_loopback_http_is_allowed_for_the_emulator() -> None:
    settings = load_settings(
        {"GOOGLE_DISCOVERY_URL": "http://localhost:8081/.well-known/openid-configuration"},
        environ={},
    )
    assert settings.GOOGLE_DISCOVERY_URL.startswith("http://localhost")


def test_risc_settings_are_validated() -> None:
    with pytest.raises(ConfigError) as problems:
        load_settings({"RISC": "on", "RISC_CONFIG_URL": "http://google.example/risc",
                       "RISC_RETENTION_DAYS": "0", "RISC_RATE_LIMIT": "lots"}, environ={})
    text = str(problems.value)
    assert "BROKER_RISC: needs BROKER_RISC_AUDIENCES or BROKER_GOOGLE_CLIENT_ID" in text
    assert "BROKER_RISC_CONFIG_URL: http:// is allowed only for the local emulator" in text
    assert "BROKER_RISC_RETENTION_DAYS: must be positive" in text
    assert "BROKER_RISC_RATE_LIMIT" in text


def test_risc_audiences_default_to_the_client_id() -> None:
    settings = load_settings({"RISC": "on", "GOOGLE_CLIENT_ID": "cid",
                              "GOOGLE_CLIENT_SECRET": "s"}, environ={})
    assert settings.RISC and settings.risc_audiences == ("cid",)
    assert settings.RISC_CONFIG_URL == "https://accounts.google.com/.well-known/risc-configuration"
    named = load_settings({"RISC": "on", "RISC_AUDIENCES": "a, b"}, environ={})
    assert named.risc_audiences == ("a", "b")
    assert load_settings({}, environ={}).RISC is False
