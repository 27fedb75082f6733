"""The manifest corpora: every file in tests/corpus/{broken,dialects} reports exactly what expected.yaml says.

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

import pytest
import yaml

from gitmesh import pipeline
from gitmesh.plan.diagnostics import CODES, Diagnostic, Severity
from gitmesh.plan.validate import Validated
from gitmesh.sync.git import read_directory

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
