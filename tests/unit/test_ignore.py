"""revision.ignore: .gitmeshignore lines become patterns, acknowledged kinds or diagnostics."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gitmesh.revision.ignore import MAX_IGNORE_BYTES, MAX_LINE_CHARS, MAX_PATTERNS, IgnoreRules, parse_ignore


def rules(text: str) -> IgnoreRules:
    data = text.encode()
    return parse_ignore("mesh/.gitmeshignore", len(data), data)


def problems(r: IgnoreRules) -> list[tuple[int, str]]:
    return [(d.location.line, d.message) for d in r.diagnostics]


def test_gitignore_patterns_leave_paths_out() -> None:
    r = rules("# drafts\ndrafts/\n*.draft.yaml\n!keep.draft.yaml\n/top.yaml\n")
    assert r.diagnostics == ()
    assert r.ignores("drafts/next.yaml")
    assert r.ignores("app/drafts/next.yaml")
    assert r.ignores("app/split.draft.yaml")
    assert not r.ignores("app/keep.draft.yaml")
    assert r.ignores("top.yaml")
    assert not r.ignores("app/top.yaml")
    assert not r.ignores("app/split.yaml")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[z-a]", "'[z-a]' is not a valid gitignore pattern: bad character range z-a"),
        ("\\", "'\\\\' is not a valid gitignore pattern"),
        ("!", "'!' is not a valid gitignore pattern"),
        ("kind: apps/", "'kind: apps/': write a kind as kind: GROUP/KIND (kind: KIND for core)"),
        ("kind: Service", "gitmesh manages Service: acknowledging it would leave its objects out"),
        ("kind: split.smi-spec.io/TrafficSplit", "gitmesh manages split.smi-spec.io/TrafficSplit"),
        ("kind: MeshConfig", "gitmesh manages MeshConfig"),
        ("kind: split.smi-spec.io/TrafficTarget", "gitmesh manages split.smi-spec.io/TrafficTarget"),
    ],
)
def test_a_bad_line_is_a_diagnostic_at_its_line_and_the_others_still_count(line: str, message: str) -> None:
    r = rules(f"drafts/\n{line}\n*.bak\n")
    assert [(n, m[: len(message)]) for n, m in problems(r)] == [(2, message)]
    assert r.diagnostics[0].location.file == "mesh/.gitmeshignore"
    assert r.diagnostics[0].is_error
    assert r.ignores("drafts/x.yaml")
    assert r.ignores("x.bak")


def test_a_one_megabyte_line_is_refused_by_its_length() -> None:
    r = rules("drafts/\n" + "x" * (1024 * 1024 - 100) + "\n*.bak\n")
    assert problems(r) == [(2, f"line is {1024 * 1024 - 100:,} characters; the limit is {MAX_LINE_CHARS:,}")]
    assert r.ignores("x.bak")


def test_pattern_count_is_bounded() -> None:
    r = rules("".join(f"f{i}.yaml\n" for i in range(MAX_PATTERNS + 5)))
    assert problems(r) == [
        (MAX_PATTERNS + 1, f"more than {MAX_PATTERNS:,} patterns: this one and those after are not used")
    ]
    assert r.ignores(f"f{MAX_PATTERNS - 1}.yaml")
    assert not r.ignores(f"f{MAX_PATTERNS}.yaml")


def test_an_oversized_file_is_not_read() -> None:
    r = parse_ignore(".gitmeshignore", MAX_IGNORE_BYTES + 1, b"")
    assert problems(r) == [
        (1, f"file is {MAX_IGNORE_BYTES + 1:,} bytes; the limit is {MAX_IGNORE_BYTES:,}: none of it is used")
    ]
    assert not r.ignores("x.yaml")


def test_matching_does_not_backtrack() -> None:
    """Python's re needs seconds for this pattern on 30 characters and ages on 4,000; RE2 is linear.
    A backtracking matcher would hold this test past pytest's timeout."""
    r = rules("*a" * 40 + "b\n")
    assert r.diagnostics == ()
    assert not r.ignores("a" * 4_000 + ".yaml")
    assert r.ignores("a" * 40 + "b")


def test_kind_lines_acknowledge_kinds() -> None:
    r = rules("kind: apps/Deployment\nkind:   ConfigMap\nkind: helm.toolkit.fluxcd.io/HelmRelease\n")
    assert r.diagnostics == ()
    assert r.acknowledged == {
        ("apps", "Deployment"),
        ("", "ConfigMap"),
        ("helm.toolkit.fluxcd.io", "HelmRelease"),
    }
    assert not r.ignores("kind: apps/Deployment")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40), max_size=20))
@example(["[z-a]", "\\", "!", "**/[", "[!]", "a/**/", "\\\\", "[[:alpha:]]", "kind:", "kind: /X"])
def test_any_lines_give_rules_or_diagnostics_never_a_traceback(lines: list[str]) -> None:
    r = rules("\n".join(lines))
    for path in ("a.yaml", "drafts/x.yaml", "[z-a]", "kind: x"):
        assert r.ignores(path) in (True, False)
    assert all(d.code == "GM050" and d.location.line >= 1 for d in r.diagnostics)
