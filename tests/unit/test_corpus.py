"""The corpora: every file in tests/corpus/{broken,dialects} reports exactly what expected.yaml says, and
every directory in tests/corpus/layouts (a revision laid out as real repositories are: Kustomize, Helm
charts, foreign kinds, .gitmeshignore) gets the verdict its expected.yaml gives, read from a
directory and from a Git commit alike.

Each file is copied alone into a fresh directory, read with ``read_directory`` and
checked with ``pipeline.check``, the path ``gitmesh validate`` takes. Alone,
because validation looks across all files of a revision: a Service in one case
must not satisfy a TrafficSplit in another.

The comparison is exact: the multiset of (code, line, path) must equal the
expected one, so a missing diagnostic, an extra one and a wrong line all fail.
Adding a code to ``CODES`` without a corpus case that produces it fails too.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import git
import pytest
import yaml

from gitmesh import pipeline
from gitmesh.plan.validate import Validated
from gitmesh.revision.diagnostics import CODES, Diagnostic, Severity
from gitmesh.revision.kustomize import KUSTOMIZATION_FILES
from gitmesh.sync.git import read_directory, read_revision
from tests.conftest import GitRepo

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
# broken/: broken manifests; dialects/: the forms real SMI and OSM repositories write, right or wrong.
CORPORA = ("broken", "dialects")
EXPECTED: dict[str, list[dict[str, Any]]] = {
    f"{corpus}/{name}": entries
    for corpus in CORPORA
    for name, entries in yaml.safe_load((CORPUS / corpus / "expected.yaml").read_text()).items()
}
FILES = sorted(
    f"{corpus}/{p.name}"
    for corpus in CORPORA
    for p in (CORPUS / corpus).iterdir()
    if p.name != "expected.yaml"
)
MAX_CASE_BYTES = 8 * 1024

# Codes no corpus file can show, with the test that shows them instead.
GENERATED = {
    "GM003": ("test_load.py", "test_oversized_file_is_refused_unparsed"),
    "GM009": ("test_load.py", "test_too_many_documents_are_refused_and_say_so"),
    # Without a cluster a missing Service is GM110; the cluster's answer is needed for GM161.
    "GM161": (
        "test_validate.py",
        "test_a_route_s_services_outside_the_revision_are_looked_up_in_the_cluster",
    ),
}

# Cases that fail today because of a bug in gitmesh, not in the case. Each is an
# xfail(strict=True): when the bug is fixed the case passes, and the entry must go.
KNOWN_BUGS: dict[str, str] = {}


def _cases() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
        if name in KNOWN_BUGS
        else pytest.param(name, id=name)
        for name in FILES
    ]


def _check_alone(name: str, tmp_path: Path) -> tuple[Validated, Path]:
    """Load and validate one corpus file as the only file of a revision."""
    root = tmp_path / "revision"
    root.mkdir()
    path = root / Path(name).name
    shutil.copyfile(CORPUS / name, path)
    revision = read_directory(str(root))
    assert [Path(f.path).name for f in revision.files] == [path.name]
    try:
        return pipeline.check(revision), path
    except Exception as e:
        pytest.fail(f"{name}: loading and validating raised {e!r} instead of returning diagnostics")


def _key(d: Diagnostic) -> tuple[str, int, str]:
    return (d.code, d.location.line, d.path)


def _expected_key(entry: dict[str, Any]) -> tuple[str, int, str]:
    return (entry["code"], entry["line"], entry.get("path", ""))


@pytest.mark.parametrize("name", _cases())
def test_corpus_case(name: str, tmp_path: Path) -> None:
    validated, path = _check_alone(name, tmp_path)
    expected = EXPECTED[name]
    got = validated.diagnostics

    assert sorted(Counter(map(_key, got)).items()) == sorted(Counter(map(_expected_key, expected)).items()), (
        "\n".join(f"  {d.location} {d.code} {d.path} {d.message}" for d in got) or "  (no diagnostics)"
    )
    for entry in expected:
        if "message" in entry:
            messages = [d.message for d in got if _key(d) == _expected_key(entry)]
            assert any(entry["message"] in m for m in messages), (entry, messages)

    lines = max(1, path.read_bytes().count(b"\n"))
    for d in got:
        assert d.location.file == str(path)
        assert d.code in CODES
        assert d.message
        assert 1 <= d.location.line <= lines, f"{d} points past the end of the file"
        assert d.location.column >= 1
    errors = [e for e in expected if CODES[e["code"]].severity is Severity.ERROR]
    assert validated.ok == (not errors)


def test_expected_covers_exactly_the_corpus() -> None:
    assert sorted(EXPECTED) == FILES
    assert set(KNOWN_BUGS) <= set(FILES)
    for name, entries in EXPECTED.items():
        assert isinstance(entries, list), name
        for entry in entries:
            assert set(entry) <= {"code", "line", "path", "message"}, (name, entry)
            assert entry["code"] in CODES, (name, entry)
            assert isinstance(entry["line"], int), (name, entry)


def test_every_code_has_a_case() -> None:
    """A new code in diagnostics.CODES needs a corpus file (or a generated test) that produces it."""
    shown = {e["code"] for name, entries in EXPECTED.items() if name not in KNOWN_BUGS for e in entries}
    shown |= {e["code"] for verdict in LAYOUTS_EXPECTED.values() for e in verdict["diagnostics"]}
    missing = set(CODES) - shown - set(GENERATED)
    assert not missing, f"no passing corpus case produces {sorted(missing)}"
    here = Path(__file__).resolve().parent
    for code, (module, test) in GENERATED.items():
        assert code not in shown, f"{code} has a corpus case now; drop it from GENERATED"
        assert f"def {test}(" in (here / module).read_text(), f"{code}: {module}::{test} is gone"


def test_cases_are_small() -> None:
    big = {name: (CORPUS / name).stat().st_size for name in FILES}
    assert all(size <= MAX_CASE_BYTES for size in big.values()), {
        n: s for n, s in big.items() if s > MAX_CASE_BYTES
    }


# --- layouts: each directory of tests/corpus/layouts is one revision ---------------------------------

LAYOUTS = CORPUS / "layouts"
LAYOUTS_EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((LAYOUTS / "expected.yaml").read_text())
LAYOUT_CASES = sorted(p.name for p in LAYOUTS.iterdir() if p.is_dir())


def _builds_kustomizations(name: str) -> bool:
    return any(p.name in KUSTOMIZATION_FILES for p in (LAYOUTS / name).rglob("*"))


def _layout_cases(*, git: bool) -> list[Any]:
    """Cases that render kustomizations run kubectl, and those read from Git run git: integration."""
    return [
        pytest.param(name, id=name, marks=pytest.mark.integration)
        if git or _builds_kustomizations(name)
        else pytest.param(name, id=name)
        for name in LAYOUT_CASES
    ]


def _assert_layout_verdict(name: str, validated: Validated, root: str) -> None:
    """The diagnostics (file relative to the case's ``root``, code, line, path, message) and the objects."""
    expected = LAYOUTS_EXPECTED[name]
    got = [
        (
            d.location.file.removeprefix(f"{root}/"),
            d.code,
            d.location.line,
            d.path,
            d.message.replace(f" {root}/", " "),
        )
        for d in validated.diagnostics
    ]
    want = [(e["file"], e["code"], e["line"], e.get("path", "")) for e in expected["diagnostics"]]
    assert sorted(g[:4] for g in got) == sorted(want), "\n".join(map(str, got)) or "(no diagnostics)"
    for e in expected["diagnostics"]:
        messages = [g[4] for g in got if g[:4] == (e["file"], e["code"], e["line"], e.get("path", ""))]
        assert any(e.get("message", "") in m for m in messages), (e, messages)
    if "objects" in expected:
        assert validated.ok
        assert sorted(str(m.ref) for m in validated.desired) == expected["objects"]
    else:
        assert not validated.ok


@pytest.mark.parametrize("name", _layout_cases(git=False))
def test_layout_case_from_a_directory(name: str, tmp_path: Path) -> None:
    root = tmp_path / "revision"
    shutil.copytree(LAYOUTS / name, root)
    namespace = LAYOUTS_EXPECTED[name].get("namespace", "")
    _assert_layout_verdict(name, pipeline.check(read_directory(str(root), namespace)), str(root))
    # Rendering works on a private copy: the directory read is left exactly as it was.
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == {
        root / p.relative_to(LAYOUTS / name): p.read_bytes()
        for p in (LAYOUTS / name).rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("name", _layout_cases(git=True))
def test_layout_case_from_a_git_commit(name: str, git_repo: GitRepo) -> None:
    """The same verdict from a commit: files come from Git objects, not from the directory."""
    shutil.copytree(LAYOUTS / name, git_repo.path / "mesh")
    git_repo.commit(name)
    shutil.rmtree(git_repo.path / "mesh")  # the work tree is gone: only the commit can be read
    revision = read_revision(
        git.Repo(git_repo.path), "HEAD", "mesh", LAYOUTS_EXPECTED[name].get("namespace", "")
    )
    _assert_layout_verdict(name, pipeline.check(revision), "mesh")


def test_layout_expectations_cover_exactly_the_cases() -> None:
    assert sorted(LAYOUTS_EXPECTED) == LAYOUT_CASES
    for name, verdict in LAYOUTS_EXPECTED.items():
        assert set(verdict) <= {"diagnostics", "objects", "namespace"}, name
        for entry in verdict["diagnostics"]:
            assert set(entry) <= {"file", "code", "line", "path", "message"}, (name, entry)
            assert entry["code"] in CODES, (name, entry)
