"""Hold the emulator's accounts, clients, grants, tokens and keys behind one lock."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_SETTINGS: dict[str, Any] = {
    "access_token_lifetime": 3599,
    "refresh_token_limit": 100,
    "testing_refresh_ttl": None,
    "auto_consent": None,
    # Gmail's quota in units per minute (Google's defaults) and calls in flight per user
    # (off unless set: Google's own cap is undocumented, and other suites must not trip on it).
    "gmail_user_quota": 15_000,
    "gmail_project_quota": 1_200_000,
    "gmail_user_concurrency": None,
}


@dataclass
class Account:
    """A Google account; `hd` makes it a Workspace account."""

    sub: str
    email: str
    name: str
    hd: str | None = None
    email_verified: bool = True
    messages_total: int = 123
    threads_total: int = 45
    history_id: str = "6789"
    reauth_required: bool = False


@dataclass
class Client:
    """An OAuth client registered in the emulator's single project."""

    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class Grant:
    """The scopes one account has granted to one client."""

    sub: str
    client_id: str
    scopes: list[str] = field(default_factory=list)


@dataclass
class RefreshToken:
    """A refresh token and the scopes it carries."""

    token: str
    sub: str
    client_id: str
    scopes: list[str]
    issued_at: int
    last_used: int
    expires_at: int | None = None


@dataclass
class AccessToken:
    """An access token; `access_type` is what tokeninfo reports."""

    token: str
    sub: str
    client_id: str
    scopes: list[str]
    issued_at: int
    expires_at: int
    access_type: str = "online"


@dataclass
class AuthCode:
    """An authorization code waiting to be exchanged (kept in memory only)."""

    code: str
    client_id: str
    redirect_uri: str
    sub: str
    scopes: list[str]
    access_type: str
    with_refresh_token: bool
    expires_at: int
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    nonce: str | None = None
    used: bool = False


def _load(cls: type[Any], raw: dict[str, Any]) -> Any:
    # Unknown keys are dropped so that state files written by newer versions still load.
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


class EmulatorState:
    """Everything the emulator knows; callers hold `lock` while reading or changing it."""

    def __init__(self, path: Path | None = None) -> None:
        self.lock = threading.RLock()
        self.path = path
        self.clients: dict[str, Client] = {}
        self.keys: list[dict[str, Any]] = []
        self.session_secret = secrets.token_urlsafe(32)
        self.clock_offset = 0
        self.frozen_at: int | None = None
        self._clear_user_data()

    def _clear_user_data(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.grants: dict[tuple[str, str], Grant] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
        # The RISC stream a receiver registered (kept in memory only): url, audience, status.
        self.risc_stream: dict[str, Any] | None = None
        self.risc_last_jti: str | None = None

    def now(self) -> int:
        """Return the emulator's clock: real (or frozen) time plus the offset, in whole seconds."""
        base = int(time.time()) if self.frozen_at is None else self.frozen_at
        return base + self.clock_offset

    def reset(self) -> None:
        """Forget accounts, grants, tokens, settings and the clock; keep clients, keys."""
        with self.lock:
            self._clear_user_data()
            self.clock_offset = 0
            self.frozen_at = None
            self.save()

    def account_by_email(self, email: str) -> Account | None:
        """Return the account with this address, compared case-insensitively."""
        wanted = email.strip().lower()
        with self.lock:
            for account in self.accounts.values():
                if account.email.lower() == wanted:
                    return account
        return None

    def add_account(
        self,
        email: str,
        *,
        name: str | None = None,
        hd: str | None = None,
        email_verified: bool | None = None,
        sub: str | None = None,
        **stats: Any,
    ) -> Account:
        """Create an account, or update the one with this address; raise ValueError if invalid."""
        email = email.strip()
        if "@" not in email or len(email) > 254:
            raise ValueError("email must be an email address")
        if sub is not None and (not sub.isascii() or not 0 < len(sub) <= 255):
            raise ValueError("sub must be 1 to 255 ASCII characters")
        unknown = set(stats) - {"messages_total", "threads_total", "history_id"}
        if unknown:
            raise ValueError(f"unknown account fields: {', '.join(sorted(unknown))}")
        with self.lock:
            account = self.account_by_email(email)
            owner = self.accounts.get(sub) if sub else None
            if owner is not None and owner is not account:
                raise ValueError("sub belongs to another account")
            if account is None:
                local = email.split("@", 1)[0].replace(".", " ").replace("_", " ")
                account = Account(sub=sub or self.new_sub(), email=email, name=local.title())
                self.accounts[account.sub] = account
            elif sub and sub != account.sub:
                raise ValueError("this email already has another sub")
            if name is not None:
                account.name = name
            if hd is not None:
                account.hd = hd or None
            if email_verified is not None:
                account.email_verified = bool(email_verified)
            for key, value in stats.items():
                setattr(account, key, str(value) if key == "history_id" else int(value))
            self.save()
            return account

    def new_sub(self) -> str:
        """Return an unused subject id shaped like Google's (21 decimal digits)."""
        with self.lock:
            while True:
                sub = "1" + "".join(secrets.choice("0123456789") for _ in range(20))
                if sub not in self.accounts:
                    return sub

    def to_dict(self) -> dict[str, Any]:
        """Return the persistent part of the state as JSON-ready data."""
        with self.lock:
            return {
                "version": 1,
                "session_secret": self.session_secret,
                "keys": self.keys,
                "settings": self.settings,
                "clients": [asdict(c) for c in self.clients.values()],
                "accounts": [asdict(a) for a in self.accounts.values()],
                "grants": [asdict(g) for g in self.grants.values()],
                "refresh_tokens": [asdict(t) for t in self.refresh_tokens.values()],
                "access_tokens": [asdict(t) for t in self.access_tokens.values()],
            }

    def load(self) -> None:
        """Read the state file if it exists."""
        if self.path is None or not self.path.exists():
            return
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        with self.lock:
            self.session_secret = raw.get("session_secret") or self.session_secret
            self.keys = list(raw.get("keys", []))
            self.settings = {**DEFAULT_SETTINGS, **raw.get("settings", {})}
            self.clients = {c["client_id"]: _load(Client, c) for c in raw.get("clients", [])}
            self.accounts = {a["sub"]: _load(Account, a) for a in raw.get("accounts", [])}
            grants = [_load(Grant, g) for g in raw.get("grants", [])]
            self.grants = {(g.sub, g.client_id): g for g in grants}
            self.refresh_tokens = {
                t["token"]: _load(RefreshToken, t) for t in raw.get("refresh_tokens", [])
            }
            self.access_tokens = {
                t["token"]: _load(AccessToken, t) for t in raw.get("access_tokens", [])
            }

    def save(self) -> None:
        """Write the state file atomically, if there is one."""
        if self.path is None:
            return
        with self.lock:
            data = json.dumps(self.to_dict(), indent=1, sort_keys=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds live tokens and private keys: owner-only, replaced in one step.
            fd, tmp = tempfile.mkstemp(prefix=".emulator-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
