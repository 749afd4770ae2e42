"""Regenerate the initial migration from the models (pre-release only: no deployed schema yet)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command

from broker.db import make_engine
from broker.migrate import MIGRATIONS, alembic_config

target = MIGRATIONS / "versions" / "0001_initial_schema.py"
target.unlink(missing_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    engine = make_engine(f"sqlite:///{Path(tmp) / 'gen.db'}")
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")
    engine.dispose()
subprocess.run([sys.executable, "-m", "ruff", "format", "-q", str(target)], check=False)  # noqa: S603 - our own formatter
print(f"wrote {target}")
