"""Renderings compared with golden files. Regenerate after a deliberate change with
UPDATE_GOLDEN=1 pytest tests/unit/test_render.py, and review the diff."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from gitmesh.objects import Location, ObjectRef
from gitmesh.plan import render
from gitmesh.revision.diagnostics import Diagnostic
from tests.unit.test_encode import sample_plan

TESTDATA = Path(__file__).parent / "testdata"


def assert_golden(name: str, actual: str) -> None:
    path = TESTDATA / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(actual)
    assert actual == path.read_text()


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=100, color_system=None, highlight=False), buf


def test_plan_text() -> None:
    console, buf = plain_console()
    render.plan_text(console, sample_plan())
    assert_golden("plan.txt", buf.getvalue())


def test_plan_markdown() -> None:
    assert_golden("plan.md", render.plan_markdown(sample_plan()))


DIAGNOSTICS = [
    Diagnostic(
        Location("mesh/split.yaml", 3, 5),
        "GM020",
        "-1 is less than the minimum of 0",
        "spec.backends[0].weight",
        ObjectRef("split.smi-spec.io", "TrafficSplit", "n", "s"),
    ),
    Diagnostic(Location("mesh/x.yaml", 1, 1), "GM011", "example.com/v1 Widget is not a kind gitmesh manages"),
]
SOURCES = {"mesh/split.yaml": b"spec:\n  backends:\n    weight: -1\n"}


def test_diagnostics_text() -> None:
    console, buf = plain_console()
    render.diagnostics_text(console, DIAGNOSTICS, SOURCES)
    assert_golden("diagnostics.txt", buf.getvalue())


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain", "::error file=mesh/split.yaml,line=3,col=5,title=GM020::spec.backends[0].weight: plain"),
        (
            "50% of\nlines",
            "::error file=mesh/split.yaml,line=3,col=5,title=GM020::"
            "spec.backends[0].weight: 50%25 of%0Alines",
        ),
    ],
)
def test_github_annotations_escape_their_data(message: str, expected: str) -> None:
    d = Diagnostic(Location("mesh/split.yaml", 3, 5), "GM020", message, "spec.backends[0].weight")
    assert render.diagnostics_github([d]) == expected


def test_github_annotation_properties_escape_commas_and_colons() -> None:
    d = Diagnostic(Location("a,b:c.yaml", 1, 1), "GM011", "x")
    assert render.diagnostics_github([d]) == "::warning file=a%2Cb%3Ac.yaml,line=1,col=1,title=GM011::x"
