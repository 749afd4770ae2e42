"""`broker risc register|verify|status` against the emulator's stream API (issue 16 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask.cli import ScriptInfo
from joserfc.jwk import RSAKey

from broker.cli import cli
from broker.emulator import Emulator
from tests.plugins.risc import Stream, audited, events


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A service-account key file shaped like Google's."""
    key = RSAKey.generate_key(2048)
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "client_email": "risc@project.iam.gserviceaccount.com",
        "private_key_id": "k1", "private_key": key.as_pem(private=True).decode(),
    }))
    return path


def _stream_at_emulator(stream: Stream) -> dict[str, object] | None:
    state = next(e for e in stream.emulator.app.extensions.values()
                 if isinstance(e, Emulator)).state
    return state.risc_stream


def _risc(stream: Stream, *args: str) -> Result:
    return CliRunner().invoke(cli, ["risc", *args],
                              obj=ScriptInfo(create_app=lambda: stream.app))


def test_register_verify_status(stream: Stream, key_file: Path) -> None:
    stream.emulator.reset()  # no stream registered yet
    status = _risc(stream, "status", "--key-file", str(key_file))
    assert status.exit_code != 0
    assert "404" in status.output and "no RISC configuration" in status.output
    receiver = stream.url + "/risc/events"
    done = _risc(stream, "register", "--key-file", str(key_file), "--url", receiver)
    assert done.exit_code == 0, done.output
    assert "registered" in done.output
    registered = _stream_at_emulator(stream)
    assert registered is not None and registered["url"] == receiver
    (row,) = audited(stream.app, "risc.stream_register")
    assert row.details["url"] == receiver and row.actor_type == "admin"
    verified = _risc(stream, "verify", "--key-file", str(key_file))
    assert verified.exit_code == 0, verified.output
    assert [e.kind for e in events(stream.app)] == ["verification"]
    shown = _risc(stream, "status", "--key-file", str(key_file))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["status"] == {"status": "enabled"}
    # The key file is read, never stored or echoed.
    assert "PRIVATE KEY" not in done.output + verified.output + shown.output


def test_verify_fails_when_no_event_arrives(stream: Stream, key_file: Path) -> None:
    stream.emulator.control("POST", "risc/stream", {"url": stream.url + "/risc/events",
                                                    "audience": "not-this-broker"})
    failed = _risc(stream, "verify", "--key-file", str(key_file), "--timeout", "0.5")
    assert failed.exit_code != 0
    assert "Traceback" not in failed.output
    assert events(stream.app) == []


@pytest.mark.parametrize("url", ["http://broker.example.com/risc/events", "ftp://x/y",
                                 "https://user:pw@broker.example.com/risc/events"])
def test_a_non_loopback_http_receiver_is_refused(stream: Stream, key_file: Path,
                                                 url: str) -> None:
    before = _stream_at_emulator(stream)
    refused = _risc(stream, "register", "--key-file", str(key_file), "--url", url)
    assert refused.exit_code != 0
    assert "receiver URL" in refused.output
    assert _stream_at_emulator(stream) == before


@pytest.mark.parametrize("content", ["not json", '{"client_email": "a"}', ""])
def test_a_bad_key_file_is_one_line(stream: Stream, tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = _risc(stream, "status", "--key-file", str(path))
    assert result.exit_code != 0
    assert "key file" in result.output and "Traceback" not in result.output
    missing = _risc(stream, "status", "--key-file", str(tmp_path / "absent.json"))
    assert missing.exit_code != 0 and "Traceback" not in missing.output
