"""Every `broker` command and option says what it does: `--help` is the CLI's manual."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from broker.cli import cli


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = dict(_commands(cli))


def test_the_tree_is_walked() -> None:
    assert {"tenant create", "client create", "keys rotate-master", "worker", "demo"} <= set(
        COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_option_has_help(name: str) -> None:
    command = COMMANDS[name]
    assert (command.help or "").strip(), f"broker {name} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert (param.help or "").strip(), f"broker {name} {param.opts[0]} has no help"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_answers_without_an_app_or_keys(name: str, tmp_path: Path) -> None:
    answer = CliRunner().invoke(cli, [*name.split(), "--help"],
                                env={"BROKER_INSTANCE_PATH": str(tmp_path)}, prog_name="broker")
    assert answer.exit_code == 0, answer.output
    assert answer.output.startswith(f"Usage: broker {name}")
