"""Every command's --help: an Examples section, and a summary that is a whole sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from gitmesh.cli import base, cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
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
    # A docstring's indentation is not carried into the rewrapped description.
    description = result.output.partition("Examples:")[0].partition("\n\n")[2]
    assert "   " not in description.strip(), description


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


def test_the_root_lists_each_command_by_its_own_summary_and_module() -> None:
    ctx = click.Context(cli)
    for name, (module, summary) in base.COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert command.callback is not None and command.callback.__module__ == module, name
        assert summary == command.get_short_help_str(limit=1000), name
    assert set(base.COMMANDS) == set(cli.commands)  # every module's commands are in the table


def test_a_command_imports_only_its_own_module() -> None:
    script = (
        "import sys; from gitmesh.cli import cli; from click.testing import CliRunner; "
        "CliRunner().invoke(cli, ['fleet', '--help']); "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('gitmesh.cli.', 'gitmesh.xds', 'grpc', 'envoy'))))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = done.stdout
    assert "gitmesh.cli.fleet" in loaded
    for other in ("gitmesh.cli.controller", "gitmesh.cli.sidecars", "gitmesh.cli.manifests", "grpc", "envoy"):
        assert f"'{other}" not in loaded, loaded


WALK = """
import click, json, sys
from gitmesh.cli import cli

def walk(group, path=()):
    for name, command in group.commands.items():
        yield " ".join((*path, name))
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))

ctx = click.Context(cli)
for name in sys.argv[1:]:
    cli.get_command(ctx, name)
print(json.dumps(sorted(walk(cli))))
"""


@pytest.mark.parametrize("module", sorted({m for m, _ in base.COMMANDS.values()}))
def test_a_commands_module_alone_makes_all_its_subcommands(module: str) -> None:
    """As ``gitmesh NAME ...`` loads it: alone, it must add every command the table gives it, and
    every subcommand those have when all modules are loaded."""
    names = [n for n, (m, _) in base.COMMANDS.items() if m == module]
    done = subprocess.run([sys.executable, "-c", WALK, names[0]], capture_output=True, text=True, check=True)
    alone = {p for p in json.loads(done.stdout) if p.split()[0] in names}
    assert alone == {" ".join(p) for p in COMMANDS if p and p[0] in names}
