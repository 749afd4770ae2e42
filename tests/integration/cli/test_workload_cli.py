"""`broker workload …` and `broker client create --auth private_key_jwt`: one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask

from broker.cli import cli
from tests.factories import make_tenant, make_user


def _run(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_workload_commands_and_a_keyed_client(app: Flask, tmp_path: Path) -> None:
    tenant = make_tenant(app, "acme", domains=("acme.test",))
    make_user(app, tenant, "alice@acme.test")
    public = tmp_path / "job.pem"
    public.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, out = _run(app, "client", "create", "--tenant", "acme", "--name", "keyed", "--scope",
                     "gmail.readonly", "--auth", "private_key_jwt", "--public-key", str(public),
                     "--json")
    assert code == 0, out
    client_id = json.loads(out.splitlines()[0])["client_id"]
    code, out = _run(app, "workload", "add", "--tenant", "acme", "--client", client_id,
                     "--issuer", "https://token.actions.githubusercontent.com", "--audience",
                     "https://broker.acme.test", "--any-subject", "--claim", "repository_id=42",
                     "--user", "alice@acme.test", "--json")
    assert code == 0, out
    rule = json.loads(out)
    assert rule["claims"] == {"repository_id": "42"} and rule["subject"] == "*"
    code, out = _run(app, "workload", "list", "--tenant", "acme", "--json")
    assert [r["trust_id"] for r in json.loads(out)] == [rule["trust_id"]]
    assert _run(app, "workload", "disable", rule["trust_id"]) == (
        0, f"disabled {rule['trust_id']}\n")
    refused = [
        (["--issuer", "http://issuer.example", "--any-subject", "--any-user"], "https://"),
        (["--issuer", "https://i.example", "--any-user"], "subject"),
        (["--issuer", "https://i.example", "--any-subject", "--user", "bob@acme.test"],
         "no user"),
        (["--issuer", "https://i.example", "--any-subject", "--any-user", "--claim", "sub=x"],
         "own option"),
        (["--issuer", "https://i.example", "--any-subject", "--any-user", "--max-lifetime",
          "999999"], "maximum lifetime"),
    ]
    for args, says in refused:
        code, out = _run(app, "workload", "add", "--tenant", "acme", "--client", client_id,
                         *args)
        assert code != 0 and says in out and len(out.strip().splitlines()) == 1, (args, out)
    code, out = _run(app, "client", "create", "--tenant", "acme", "--name", "both", "--scope",
                     "gmail.readonly", "--auth", "private_key_jwt", "--public-key", str(public),
                     "--jwks-url", "https://keys.example/jwks")
    assert code != 0 and "exactly one" in out
