"""Typed settings: defaults < instance/config.py < BROKER_* environment < the test mapping."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse as parse_limit

from broker.tls import TlsConfigError, client_context

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
GOOGLE_ISSUER = "https://accounts.google.com"
RISC_CONFIG_URL = "https://accounts.google.com/.well-known/risc-configuration"
RISC_API_URL = "https://risc.googleapis.com"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class ConfigError(Exception):
    """Raised with every problem found in the settings, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_bool(value: Any) -> bool:
    """Read a boolean from a bool or a common spelling."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def parse_list(value: Any) -> tuple[str, ...]:
    """Read a comma-separated list (or a sequence) of non-empty strings."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def parse_networks(value: Any) -> tuple[Network, ...]:
    """Read CIDRs, normalised; a bare address is a /32 or /128."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in parse_list(value))


def parse_optional(parser: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a parser so that None or an empty string means unset."""

    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parser(value)

    return parse


def _setting(default: Any, parser: Callable[[Any], Any] = str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"parse": parser}, **kwargs)


opt_str = parse_optional(str)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the broker, parsed and typed."""

    INSTANCE_PATH: str = _setting("instance")
    DATABASE_URL: str | None = _setting(None, opt_str)
    SECRET_KEY: str | None = _setting(None, opt_str, repr=False)
    MASTER_KEYS: str | None = _setting(None, opt_str, repr=False)
    MASTER_KEYS_FILE: str | None = _setting(None, opt_str)
    PKCS11_PIN: str | None = _setting(None, opt_str, repr=False)
    PKCS11_PIN_FILE: str | None = _setting(None, opt_str)
    # How long a wrap or unwrap may wait on an HSM or KMS before answering 503.
    KEY_SERVICE_TIMEOUT: float = _setting(5.0, float)
    PUBLIC_URL: str = _setting("http://127.0.0.1:8080")
    GOOGLE_CLIENT_ID: str | None = _setting(None, opt_str)
    GOOGLE_CLIENT_SECRET: str | None = _setting(None, opt_str, repr=False)
    GOOGLE_DISCOVERY_URL: str = _setting(GOOGLE_DISCOVERY_URL)
    GOOGLE_ISSUERS: tuple[str, ...] = _setting((), parse_list)
    GMAIL_API_URL: str = _setting("https://gmail.googleapis.com")
    GOOGLE_TIMEOUT: float = _setting(5.0, float)
    # The roots every callout (Google, webhooks) verifies its peer against; default the system's.
    CA_BUNDLE: str | None = _setting(None, opt_str)
    TRUSTED_PROXIES: tuple[Network, ...] = _setting((), parse_networks)
    REFRESH_BUDGET: float = _setting(10.0, float)
    API_RATE_LIMIT: str = _setting("1000/second")
    LOGIN_RATE_LIMIT: str = _setting("60/minute")
    # OAuth callbacks per source IP: each refusal used to write an audit row for anyone.
    CALLBACK_RATE_LIMIT: str = _setting("60/minute")
    AUTH_FAILURE_LIMIT: str = _setting("30/minute")
    REJECTED_TOKEN_COOLDOWN: float = _setting(30.0, float)
    REDIS_URL: str | None = _setting(None, opt_str)
    # Gmail through the broker: Google's quotas in units per minute, calls in flight per user,
    # how long a proxy token lives, and how long a proxied call may idle or last in all.
    GMAIL_USER_QUOTA: int = _setting(15_000, int)
    GMAIL_PROJECT_QUOTA: int = _setting(1_200_000, int)
    GMAIL_USER_CONCURRENCY: int = _setting(10, int)
    PROXY_TOKEN_TTL: int = _setting(600, int)
    PROXY_IDLE_TIMEOUT: float = _setting(60.0, float)
    PROXY_TOTAL_TIMEOUT: float = _setting(600.0, float)
    PROXY_TURNS: int = _setting(2, int)
    REDIS_KEY_PREFIX: str = _setting("broker")
    # Connections a process keeps once opened, opened only as its requests need them. Extra
    # (overflow) ones are closed after each use: under load that cost a PostgreSQL backend
    # start per request (hand-out p99 halved when a gevent worker's 16 busy requests at 32
    # clients stopped churning them), so by default every connection is kept: 20, as before.
    DB_POOL_SIZE: int = _setting(20, int)
    DB_MAX_OVERFLOW: int = _setting(0, int)
    # Seconds a pooled connection may sit idle before checkout pings it (0: ping every time).
    DB_PING_IDLE: float = _setting(30.0, float)
    METRICS_TOKEN: str | None = _setting(None, opt_str, repr=False)
    METRICS_IP_RANGES: tuple[Network, ...] = _setting(
        ("127.0.0.0/8", "::1/128"), parse_networks
    )
    WEBHOOK_ALLOW_PRIVATE: bool = _setting(False, parse_bool)
    # Proxies whose client-certificate header is believed (its own list: not TRUSTED_PROXIES),
    # the form they send it in (rfc9440, nginx or envoy), and the URL of the mTLS listener.
    MTLS_PROXIES: tuple[Network, ...] = _setting((), parse_networks)
    MTLS_HEADER: str = _setting("rfc9440")
    MTLS_URL: str | None = _setting(None, opt_str)
    # The mTLS listener's own chain and key (`broker serve --tls-cert/--tls-key` default).
    TLS_CERT: str | None = _setting(None, opt_str)
    TLS_KEY: str | None = _setting(None, opt_str)
    # A buffering reverse proxy fronts `broker serve`: only then may it bind a public address.
    BEHIND_PROXY: bool = _setting(False, parse_bool)
    SEAL_ROTATE_THRESHOLD: int = _setting(2**30, int)
    SEAL_BLOCK: int = _setting(1000, int)
    DATA_KEY_CACHE_SECONDS: float = _setting(300.0, float)
    CLOCK_SKEW: float = _setting(60.0, float)
    CLIENT_CACHE_SECONDS: float = _setting(5.0, float)
    # Cross-Account Protection: the receiver at POST /risc/events (README "Security events").
    RISC: bool = _setting(False, parse_bool)
    RISC_CONFIG_URL: str = _setting(RISC_CONFIG_URL)
    # Where `broker risc register|verify|status` manage the stream (the emulator in tests).
    RISC_API_URL: str = _setting(RISC_API_URL)
    # The `aud` values accepted; empty means the Google client id.
    RISC_AUDIENCES: tuple[str, ...] = _setting((), parse_list)
    RISC_RETENTION_DAYS: int = _setting(90, int)
    RISC_RATE_LIMIT: str = _setting("600/minute")
    # The one JWKS cache (RISC, workload issuers, private_key_jwt clients): keys kept this long
    # (less when the answer's Cache-Control says so); an unknown kid refetches once a cooldown.
    JWKS_TTL: float = _setting(3600.0, float)
    JWKS_COOLDOWN: float = _setting(30.0, float)
    # Seconds of clock skew allowed on workload tokens' and client assertions' times.
    WORKLOAD_LEEWAY: float = _setting(60.0, float)
    LOG_LEVEL: str = _setting("INFO")
    DEBUG: bool = _setting(False, parse_bool)

    @property
    def instance_dir(self) -> Path:
        """Return the instance folder as an absolute path."""
        return Path(self.INSTANCE_PATH).resolve()

    @property
    def database_url(self) -> str:
        """Return the database URL, SQLite in the instance folder by default."""
        return self.DATABASE_URL or f"sqlite:///{self.instance_dir / 'broker.db'}"

    @property
    def master_keys_file(self) -> Path:
        """Return the master key file's path."""
        if self.MASTER_KEYS_FILE:
            return Path(self.MASTER_KEYS_FILE)
        return self.instance_dir / "master.keys"

    @property
    def secret_key_file(self) -> Path:
        """Return the path of the generated Flask secret key."""
        return self.instance_dir / "secret_key"

    @property
    def https(self) -> bool:
        """Say whether the public URL is on HTTPS (secure cookies, HSTS)."""
        return urlsplit(self.PUBLIC_URL).scheme == "https"

    @property
    def risc_audiences(self) -> tuple[str, ...]:
        """Return the accepted RISC audiences: configured, else the Google client id."""
        if self.RISC_AUDIENCES:
            return self.RISC_AUDIENCES
        return (self.GOOGLE_CLIENT_ID,) if self.GOOGLE_CLIENT_ID else ()

    @property
    def google_configured(self) -> bool:
        """Say whether Google sign-in is configured."""
        return bool(self.GOOGLE_CLIENT_ID and self.GOOGLE_CLIENT_SECRET)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _from_instance_file(instance_path: str) -> dict[str, Any]:
    path = Path(instance_path) / "config.py"
    if not path.is_file():
        return {}
    values = runpy.run_path(str(path))
    return {k.removeprefix("BROKER_"): v for k, v in values.items() if k.isupper()}


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    return {k[len("BROKER_") :]: v for k, v in environ.items() if k.startswith("BROKER_")}


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge the sources in order, parse each value and raise ConfigError listing every problem."""
    env = _from_environ(os.environ if environ is None else environ)
    overrides = {k.removeprefix("BROKER_"): v for k, v in (overrides or {}).items()}
    instance_path = overrides.get("INSTANCE_PATH") or env.get("INSTANCE_PATH") or "instance"
    raw: dict[str, Any] = {}
    for source in (_from_instance_file(str(instance_path)), env, overrides):
        raw.update({k: v for k, v in source.items() if k in FIELDS})
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, value in raw.items():
        parse = FIELDS[name].metadata["parse"]
        try:
            values[name] = parse(value)
        except (TypeError, ValueError) as exc:
            problems.append(f"BROKER_{name}: {exc}")
    if "METRICS_IP_RANGES" not in values:
        values["METRICS_IP_RANGES"] = parse_networks(FIELDS["METRICS_IP_RANGES"].default)
    settings = Settings(**values)
    problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def is_loopback_url(url: str) -> bool:
    """Say whether a URL points at this machine's loopback interface."""
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(settings: Settings) -> list[str]:
    """Return every problem with settings that are each well-typed."""
    problems = []
    public = urlsplit(settings.PUBLIC_URL)
    if public.scheme not in {"http", "https"} or not public.hostname:
        problems.append("BROKER_PUBLIC_URL: must be an absolute http(s) URL")
    elif public.scheme != "https" and not is_loopback_url(settings.PUBLIC_URL):
        problems.append("BROKER_PUBLIC_URL: must be https:// unless it is a loopback address")
    for name in ("GOOGLE_DISCOVERY_URL", "GMAIL_API_URL", "RISC_CONFIG_URL",
                 "RISC_API_URL"):
        url = getattr(settings, name)
        scheme = urlsplit(url).scheme
        if scheme not in {"http", "https"}:
            problems.append(f"BROKER_{name}: must be an absolute http(s) URL")
        elif scheme == "http" and not is_loopback_url(url):
            problems.append(f"BROKER_{name}: http:// is allowed only for the local emulator")
    for name in ("REFRESH_BUDGET", "GOOGLE_TIMEOUT", "KEY_SERVICE_TIMEOUT", "SEAL_BLOCK",
                 "SEAL_ROTATE_THRESHOLD", "DB_POOL_SIZE", "GMAIL_USER_QUOTA",
                 "GMAIL_PROJECT_QUOTA", "GMAIL_USER_CONCURRENCY", "PROXY_IDLE_TIMEOUT",
                 "PROXY_TOTAL_TIMEOUT", "PROXY_TURNS"):
        if getattr(settings, name) <= 0:
            problems.append(f"BROKER_{name}: must be positive")
    for name in ("DB_MAX_OVERFLOW", "DB_PING_IDLE", "JWKS_TTL", "JWKS_COOLDOWN",
                 "WORKLOAD_LEEWAY"):
        if getattr(settings, name) < 0:
            problems.append(f"BROKER_{name}: must not be negative")
    for name in ("API_RATE_LIMIT", "LOGIN_RATE_LIMIT", "CALLBACK_RATE_LIMIT",
                 "AUTH_FAILURE_LIMIT", "RISC_RATE_LIMIT"):
        problem = rate_limit_problem(getattr(settings, name))
        if problem:
            problems.append(f"BROKER_{name}: {problem}")
    if settings.SEAL_BLOCK > settings.SEAL_ROTATE_THRESHOLD:
        problems.append("BROKER_SEAL_BLOCK: must not exceed BROKER_SEAL_ROTATE_THRESHOLD")
    if not 60 <= settings.PROXY_TOKEN_TTL <= 3600:
        problems.append("BROKER_PROXY_TOKEN_TTL: must be 60-3600 seconds")
    if settings.RISC_RETENTION_DAYS <= 0:
        problems.append("BROKER_RISC_RETENTION_DAYS: must be positive")
    if settings.RISC and not settings.risc_audiences:
        problems.append("BROKER_RISC: needs BROKER_RISC_AUDIENCES or BROKER_GOOGLE_CLIENT_ID")
    if settings.MTLS_URL and urlsplit(settings.MTLS_URL).scheme != "https":
        problems.append("BROKER_MTLS_URL: must be an https:// URL (the mTLS listener)")
    if settings.MTLS_HEADER not in ("rfc9440", "nginx", "envoy"):
        problems.append("BROKER_MTLS_HEADER: must be rfc9440, nginx or envoy")
    if settings.CA_BUNDLE:
        try:
            client_context(settings.CA_BUNDLE)
        except TlsConfigError as exc:
            problems.append(f"BROKER_CA_BUNDLE: {exc}")
    if bool(settings.GOOGLE_CLIENT_ID) != bool(settings.GOOGLE_CLIENT_SECRET):
        problems.append("BROKER_GOOGLE_CLIENT_ID and BROKER_GOOGLE_CLIENT_SECRET go together")
    return problems


def rate_limit_problem(value: str) -> str | None:
    """Return why a rate limit (`100/minute`, or `off`) cannot be read, or None."""
    if value.strip().lower() == "off":
        return None
    try:
        parse_limit(value)
    except ValueError:
        return f"not a rate limit (like 100/minute or off): {value[:60]!r}"
    return None


def issuers(settings: Settings, discovery_issuer: str) -> tuple[str, ...]:
    """Return the accepted id_token issuers: configured, else the discovery issuer (+ Google's)."""
    if settings.GOOGLE_ISSUERS:
        return settings.GOOGLE_ISSUERS
    if discovery_issuer == GOOGLE_ISSUER:
        return (GOOGLE_ISSUER, "accounts.google.com")
    return (discovery_issuer,)
