"""The README's Python code blocks run as written, against the demo and the emulator."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_demo import connect_gmail, demo, sign_in  # noqa: F401 - the fixture
from tests.plugins.emulator import EmulatorControls

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    """Return the README's ```python blocks, in order."""
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def for_the_demo(block: str, **values: str) -> str:
    """Point a block's `NAME = …` settings at this demo; every named setting must be there."""
    for names, value in values.items():
        block, count = re.subn(rf"^{names} = .*$", f"{names} = {value}", block,
                               flags=re.MULTILINE)
        assert count == 1, f"the README's SDK block no longer sets {names}"
    return block


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("BrokerCredentials" in b for b in blocks)
    assert any("def test_" in b for b in blocks)


def test_readme_python_blocks_run_against_the_demo(
    demo: tuple[str, str], page: Any, emulator: EmulatorControls  # noqa: F811 - the fixture
) -> None:
    url, printed = demo
    credentials = re.search(r"-u '([^:']+):([^']+)'", printed)
    google = re.search(r"(http://localhost:\d+)/Logout", printed)
    assert credentials and google, printed
    sign_in(page, url, "alice@demo.test")
    connect_gmail(page, url)

    ran = 0
    for block in python_blocks():
        secrets = {"CLIENT_ID, CLIENT_SECRET": f"{credentials.group(1)!r}, "
                                               f"{credentials.group(2)!r}"}
        if "BrokerCredentials" in block:
            block = for_the_demo(
                block, BROKER_URL=repr(url), GMAIL_API=repr(google.group(1)), **secrets)
        elif "proxy_credentials" in block:
            block = for_the_demo(block, BROKER_URL=repr(url), **secrets)
        namespace: dict[str, Any] = {"__name__": "readme"}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
            # A block that defines a test is run with the emulator fixture it names.
            for name, function in list(namespace.items()):
                if name.startswith("test_") and inspect.isfunction(function):
                    function(emulator)
        if "BrokerCredentials" in block:
            assert namespace["token"].access_token.startswith("ya29.")
            assert int(out.getvalue().strip()) >= 0
        if "proxy_credentials" in block:  # Gmail through the broker: a proxy token only
            assert namespace["creds"].token.startswith("bpt1.")
            assert int(out.getvalue().strip()) > 0
        ran += 1
    assert ran == len(python_blocks())
