"""The ``gitmesh`` command.

Exit codes: 0 success; 1 an error (invalid revision, refused apply, ...);
2 a usage error, or, with ``plan --detailed-exitcode``, a plan with changes.
"""

from gitmesh.cli.base import cli


def main() -> None:
    cli()


__all__ = ["cli", "main"]
