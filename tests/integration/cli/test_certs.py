"""`broker certs check`: a chain file judged as the broker's peers would read it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from broker.cli import cli
from broker.emulator.pki import issue


def _check(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["certs", "check", *args], prog_name="broker")
    return result.exit_code, result.output.splitlines()


def test_a_good_chain_and_its_key_pass(tmp_path: Path) -> None:
    root = issue("root", ca=True)
    mid = issue("intermediate", issuer=root, ca=True)
    leaf = issue("broker.test", issuer=mid, hosts=("broker.test",))
    (tmp_path / "chain.pem").write_bytes(leaf.pem() + mid.pem())
    (tmp_path / "key.pem").write_bytes(leaf.key_pem())
    code, lines = _check(str(tmp_path / "chain.pem"), "--key", str(tmp_path / "key.pem"))
    assert code == 0, lines
    assert lines[0].endswith("chain.pem: 2 certificates")
    assert lines[1].startswith(
        "  1. subject CN=broker.test,O=Google emulator (NOT Google), issuer CN=intermediate")
    assert lines[-1] == ("ok: leaf first, each signed by the next, no root, all within "
                         "validity, the key matches the leaf")


def test_problems_are_named_with_what_to_do_and_exit_1(tmp_path: Path) -> None:
    root = issue("root", ca=True)
    mid = issue("intermediate", issuer=root, ca=True)
    leaf = issue("broker.test", issuer=mid, hosts=("broker.test",))
    (tmp_path / "chain.pem").write_bytes(mid.pem() + leaf.pem() + root.pem())
    code, lines = _check(str(tmp_path / "chain.pem"))
    assert code == 1
    problems = [line for line in lines if line.startswith("problem: ")]
    assert len(problems) == 4 and "put the leaf first" in problems[0]
    assert lines[-1] == f"Error: 4 problems in {tmp_path / 'chain.pem'}"


def test_unreadable_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    code, lines = _check(str(tmp_path / "junk.pem"))
    assert code == 1 and len(lines) == 1 and "no PEM certificate could be read" in lines[0]
    code, lines = _check(str(tmp_path / "absent.pem"))
    assert code == 2 and "does not exist" in lines[-1]


def test_root_included_and_intermediates_reversed_are_both_explained(tmp_path: Path) -> None:
    root = issue("root", ca=True)
    upper = issue("upper intermediate", issuer=root, ca=True)
    lower = issue("lower intermediate", issuer=upper, ca=True)
    leaf = issue("broker.test", issuer=lower, hosts=("broker.test",))
    (tmp_path / "chain.pem").write_bytes(leaf.pem() + upper.pem() + lower.pem() + root.pem())
    code, lines = _check(str(tmp_path / "chain.pem"))
    problems = [line for line in lines if line.startswith("problem: ")]
    assert code == 1 and len(problems) == 4, lines
    assert "certificate 1 is not signed by certificate 2: order the file leaf, then its " \
           "issuer" in problems[0]
    assert "certificate 2 is not signed by certificate 3" in problems[1]
    assert "certificate 3 is not signed by certificate 4" in problems[2]
    assert "ends with a self-signed root: remove it" in problems[3]
