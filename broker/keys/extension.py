"""Attach the master keyring and the data-key service to the app."""

from __future__ import annotations

from flask import Flask, current_app

from broker.clock import app_clock
from broker.keys.sealed import Keyring, RemoteOptions, provider_from_settings
from broker.keys.service import KeyService


def build_key_service(app: Flask) -> KeyService:
    """Load the master keyring named by the settings; raise KeySourceError naming the source."""
    settings = app.config["BROKER"]
    provider = provider_from_settings(
        settings.MASTER_KEYS, settings.master_keys_file, remote_options(app)
    )
    return KeyService(
        Keyring(provider),
        block=settings.SEAL_BLOCK,
        threshold=settings.SEAL_ROTATE_THRESHOLD,
        cache_seconds=settings.DATA_KEY_CACHE_SECONDS,
        wall_clock=app_clock(app),
    )


def remote_options(app: Flask) -> RemoteOptions:
    """Return what remote masters need from the settings: the PIN and the time budget."""
    settings = app.config["BROKER"]
    return RemoteOptions(pin=settings.PKCS11_PIN, pin_file=settings.PKCS11_PIN_FILE,
                         timeout=settings.KEY_SERVICE_TIMEOUT)


def get_keys(app: Flask | None = None) -> KeyService:
    """Return the app's KeyService, loading the keyring on first use."""
    app = app or current_app
    service = app.extensions.get("broker.keys")
    if service is None:
        service = app.extensions["broker.keys"] = build_key_service(app)
    return service


def init_app(app: Flask, *, require: bool = True) -> None:
    """Load the keyring now when required, so a bad key stops start-up."""
    if require:
        app.extensions["broker.keys"] = build_key_service(app)
