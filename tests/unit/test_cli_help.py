"""Every command's --help: an Examples section, and a summary that is a whole sentence."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from gitmesh.cli import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


COMMANDS = list(_commands(cli))


def test_the_walk_finds_the_nested_commands() -> None:
    assert {("plan",), ("rollout", "status"), ("certs", "rotate"), ("install", "crds")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "gitmesh")
def test_every_command_has_examples(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    examples = result.output.partition("Examples:\n")[2]
    assert examples, f"gitmesh {' '.join(path)} --help has no Examples section"
    assert examples.lstrip().startswith("gitmesh "), examples


@pytest.mark.parametrize(
    "path", [p for p in COMMANDS if not p or len(p) == 1], ids=lambda p: " ".join(p) or "gitmesh"
)
def test_command_summaries_are_whole_sentences(path: tuple[str, ...]) -> None:
    group = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80).output
    listed = group.partition("Commands:\n")[2]
    assert "..." not in listed, listed


def test_a_misspelt_command_gets_a_suggestion() -> None:
    result = CliRunner().invoke(cli, ["rollout", "stauts"])
    assert result.exit_code == 2
    assert "No such command 'stauts'. Did you mean 'status'?" in result.output
