"""Gmail OAuth token broker: the application factory."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from broker.config import Settings, load_settings

SYNC_CACHE = 512


class BrokerFlask(Flask):
    """Flask, asking once per function, not per request, whether a hook is a coroutine."""

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Return `func` unchanged unless it is a coroutine function (cached: ~9 hooks a call)."""
        known: set[Callable[..., Any]] = self.__dict__.setdefault("_known_sync", set())
        if func in known:
            return func
        if inspect.iscoroutinefunction(func):
            return self.async_to_sync(func)
        if len(known) < SYNC_CACHE:  # bounded: a closure made per request is not kept forever
            known.add(func)
        return func


def template_folder() -> str:
    """Return the templates: the checkout's top-level folder, else the copy inside the wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "templates"
    return str(checkout if checkout.is_dir() else here / "templates")


def _secret_key(settings: Settings) -> str:
    if settings.SECRET_KEY:
        return settings.SECRET_KEY
    try:
        return settings.secret_key_file.read_text(encoding="ascii").strip()
    except OSError:
        # Without `broker init` there is no shared key: fine for one process, and our sessions
        # live server-side, so a restart only invalidates open forms.
        return secrets.token_urlsafe(32)


def create_app(config: Mapping[str, Any] | None = None, *, require_keys: bool = True) -> Flask:
    """Load settings, wire every extension and blueprint, and return the app."""
    settings = load_settings(config)
    app = BrokerFlask(
        "broker",
        template_folder=template_folder(),
        static_folder=None,
        instance_path=str(settings.instance_dir),
    )
    app.config.update(
        BROKER=settings,
        SECRET_KEY=_secret_key(settings),
        DEBUG=settings.DEBUG,
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        SESSION_COOKIE_NAME=("__Host-" if settings.https else "") + "broker_flask",
        SESSION_COOKIE_SECURE=settings.https,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    if config:
        app.config["TESTING"] = bool(config.get("TESTING", False))

    from broker import api, db, health, jwks, keys, logging, metrics, tokens, web

    logging.init_app(app)
    db.init_app(app)
    jwks.init_app(app)
    keys.init_app(app, require=require_keys)
    health.init_app(app)
    metrics.init_app(app)
    tokens.init_app(app)  # the API's hand-out and the worker share it
    api.init_app(app)
    web.init_app(app)
    return app
