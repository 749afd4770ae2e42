"""`broker tenant list` says when there are no tenants instead of printing nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import ScriptInfo

from broker.cli import cli
from tests.factories import make_tenant


def invoke(app: Flask, *args: str) -> Result:
    """Run a `broker` command against this app."""
    return CliRunner().invoke(cli, list(args), obj=ScriptInfo(create_app=lambda: app))


def test_an_empty_tenant_list_says_so_and_how_to_start(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    empty = invoke(app, "tenant", "list")
    assert empty.exit_code == 0
    assert empty.output.strip() == (
        "no tenants yet; create one with `broker tenant create SLUG --name NAME --admin EMAIL`"
    )
    assert json.loads(invoke(app, "tenant", "list", "--json").output) == []  # scripts get []
    make_tenant(app, "acme", domains=("acme.test",))
    listed = invoke(app, "tenant", "list")
    assert listed.output.startswith("acme\t") and "no tenants" not in listed.output
