"""`broker client create --method` and `broker client set-methods`: the proxy's allowlist."""

from __future__ import annotations

import json

from flask import Flask

from broker.cli import cli
from tests.factories import make_tenant


def _run(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_method_allowlists_are_set_listed_and_refused_in_one_line(app: Flask) -> None:
    make_tenant(app, "acme", domains=("acme.test",))
    code, out = _run(app, "client", "create", "--tenant", "acme", "--name", "reader", "--scope",
                     "gmail.readonly", "--method", "gmail.users.messages.list", "--json")
    assert code == 0, out
    client_id = json.loads(out.splitlines()[0])["client_id"]
    listed = json.loads(_run(app, "client", "list", "--tenant", "acme", "--json")[1])
    assert listed[0]["gmail_methods"] == ["gmail.users.messages.list"]
    code, out = _run(app, "client", "set-methods", client_id, "--default", "--json")
    assert code == 0 and "gmail.users.messages.get" in json.loads(out)["methods"]
    assert "gmail.users.messages.send" not in json.loads(out)["methods"]  # not its scopes'
    for args, says in [
        (["--method", "gmail.users.messages.send"], "needs a scope this client may not use"),
        (["--method", "gmail.users.nothing"], "unknown Gmail method"),
        ([], "give --method"),
    ]:
        code, out = _run(app, "client", "set-methods", client_id, *args)
        last = out.strip().splitlines()[-1]  # a usage error is click's usage, then one line
        assert code != 0 and last.startswith("Error: ") and says in last, out
        assert "Traceback" not in out
