"""``.gitmeshignore``: paths to leave out (gitignore syntax) and foreign kinds to acknowledge.

A line ``kind: apps/Deployment`` (``kind: ConfigMap`` for the core group) acknowledges a kind gitmesh
does not manage: its objects are left out without a word. Every other line is a gitignore pattern.
Patterns are matched with RE2, so matching takes time linear in the path whatever the pattern; a
line that cannot be used is a diagnostic at that line, and the lines around it still count.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import pathspec
import re2
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from gitmesh.apis import kinds
from gitmesh.objects import Location
from gitmesh.revision.diagnostics import Diagnostic

IGNORE_FILE = ".gitmeshignore"
MAX_IGNORE_BYTES = 1024 * 1024
MAX_PATTERNS = 1_000
MAX_LINE_CHARS = 1_024

_KIND_LINE = re.compile(
    r"kind:\s*(?:(?P<group>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)/)?(?P<kind>[A-Za-z][A-Za-z0-9]*)"
)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True)
class IgnoreRules:
    """What one ``.gitmeshignore`` says: patterns, acknowledged (group, kind) pairs, and its problems."""

    spec: pathspec.GitIgnoreSpec = field(default_factory=lambda: pathspec.GitIgnoreSpec([]))
    acknowledged: frozenset[tuple[str, str]] = frozenset()
    diagnostics: tuple[Diagnostic, ...] = ()

    def ignores(self, path: str) -> bool:
        """Whether ``path`` (relative to the manifest directory) is left out."""
        return bool(self.spec.match_file(path))


def parse_ignore(file: str, size: int, data: bytes) -> IgnoreRules:
    """The rules of the ignore file ``file`` (its repository path, for diagnostics)."""
    if size > MAX_IGNORE_BYTES:
        message = f"file is {size:,} bytes; the limit is {MAX_IGNORE_BYTES:,}: none of it is used"
        return IgnoreRules(diagnostics=(Diagnostic(Location(file), "GM050", message),))
    patterns: list[GitIgnoreSpecPattern] = []
    kinds: set[tuple[str, str]] = set()
    problems: list[Diagnostic] = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        here = Location(file, number)
        if len(line) > MAX_LINE_CHARS:
            problems.append(
                Diagnostic(
                    here, "GM050", f"line is {len(line):,} characters; the limit is {MAX_LINE_CHARS:,}"
                )
            )
            continue
        if line.startswith("kind:"):
            kind = _KIND_LINE.fullmatch(line.strip())
            if kind is None:
                problems.append(
                    Diagnostic(
                        here, "GM050", f"{line!r}: write a kind as kind: GROUP/KIND (kind: KIND for core)"
                    )
                )
            elif _close_to_managed(key := (kind["group"] or "", kind["kind"])):
                message = f"gitmesh manages {line[5:].strip()}: acknowledging it would leave its objects out"
                problems.append(Diagnostic(here, "GM050", message))
            else:
                kinds.add(key)
            continue
        try:
            with warnings.catch_warnings():  # Python's re frets over '[[:alpha:]]'; RE2 is what matches
                warnings.simplefilter("ignore", FutureWarning)
                pattern = GitIgnoreSpecPattern(line)
            if pattern.regex is not None:
                re2.compile(pattern.regex.pattern, _RE2_OPTIONS)
        except (ValueError, re.error, re2.error) as e:
            problems.append(
                Diagnostic(here, "GM050", f"{line!r} is not a valid gitignore pattern{_reason(e)}")
            )
            continue
        if pattern.include is None:  # a comment or a blank line
            continue
        if len(patterns) == MAX_PATTERNS:
            problems.append(
                Diagnostic(
                    here,
                    "GM050",
                    f"more than {MAX_PATTERNS:,} patterns: this one and those after are not used",
                )
            )
            break
        patterns.append(pattern)
    return IgnoreRules(pathspec.GitIgnoreSpec(patterns, backend="re2"), frozenset(kinds), tuple(problems))


def _reason(e: Exception) -> str:
    """What the regular expression engine said, if it was the one that refused."""
    if isinstance(e, re.error):
        return f": {e.msg}"
    if isinstance(e, re2.error) and e.args and isinstance(e.args[0], bytes):
        return f": {e.args[0].decode()}"
    return ""


def _close_to_managed(key: tuple[str, str]) -> bool:
    """A kind gitmesh manages, or its name in a group gitmesh reads (``kind: MeshConfig``, for OSM's
    MeshConfig written as v1): leaving such objects out quietly could prune what they declare."""
    known = kinds.managed()
    return key in known or (key[0] in {g for g, _ in known} and key[1] in {k for _, k in known})
