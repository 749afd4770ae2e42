"""First-run set-up of an instance: secret key, master key file and schema (idempotent)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask

from broker.db import get_db
from broker.keys import FileKeyProvider, format_key_line, new_key, new_key_id
from broker.migrate import upgrade


def write_secret_file(path: Path, content: str) -> bool:
    """Create a 0600 file unless it exists; return whether it was created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    return True


@contextmanager
def private_umask() -> Iterator[None]:
    """Create files and folders readable by their owner only while the block runs."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def initialise(app: Flask) -> list[str]:
    """Create what is missing, never overwrite a key; return what was done, one line each."""
    with private_umask():
        return _initialise(app)


def _initialise(app: Flask) -> list[str]:
    settings = app.config["BROKER"]
    done: list[str] = []
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    if not settings.SECRET_KEY and write_secret_file(
        settings.secret_key_file, secrets.token_urlsafe(48) + "\n"
    ):
        done.append(f"created {settings.secret_key_file}")
    if settings.MASTER_KEYS:
        done.append("master keys come from BROKER_MASTER_KEYS; no key file written")
    else:
        path = settings.master_keys_file
        if write_secret_file(path, format_key_line(new_key_id(), new_key()) + "\n"):
            done.append(f"created {path} (mode 0600)")
        else:
            FileKeyProvider(path).load()  # a corrupted existing file is reported, not replaced
    database = get_db(app)
    upgrade(database.engine)
    if database.is_sqlite and database.engine.url.database:
        # Files an older version left open to others; SQLite gives new -wal/-shm the db's mode.
        for suffix in ("", "-wal", "-shm"):
            path = Path(database.engine.url.database + suffix)
            if path.exists():
                os.chmod(path, 0o600)
    done.append(f"database ready: {database.engine.url.render_as_string(hide_password=True)}")
    return done
