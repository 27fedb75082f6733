"""revision.load: manifests with their positions, and hostile input refused cheaply.

The hostile inputs are generated here, never committed. Each runs under
``tracemalloc`` and must peak below ``MEMORY_BOUND``. tracemalloc sees the Python
heap (nodes, values, positions), not libyaml's own C buffers, so the bound is for
what gitmesh builds; pytest-timeout bounds the time.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gitmesh import pipeline
from gitmesh.objects import Location, Manifest
from gitmesh.plan.validate import validate
from gitmesh.revision.diagnostics import CODES, Diagnostic
from gitmesh.revision.load import (
    MAX_DEPTH,
    MAX_DOCUMENTS,
    MAX_FILE_BYTES,
    MAX_VALUES,
    RevisionFile,
    load_file,
    load_files,
)
from gitmesh.sync.git import read_directory

MEMORY_BOUND = 32 * 1024 * 1024  # the worst refused case below peaks near 5 MB
T = TypeVar("T")


def source(text: str | bytes, path: str = "m.yaml") -> RevisionFile:
    data = text.encode() if isinstance(text, str) else text
    return RevisionFile(path, len(data), data)


def load(text: str | bytes, path: str = "m.yaml") -> tuple[list[Manifest], list[Diagnostic]]:
    return load_file(source(text, path))


def codes(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> list[tuple[str, int]]:
    return [(d.code, d.location.line) for d in diagnostics]


def traced(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of Python memory allocated while it ran."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def at(text: str, line: int, needle: str, path: str = "m.yaml") -> Location:
    """The location of the first ``needle`` on ``line`` (1-based) of ``text``."""
    return Location(path, line, text.splitlines()[line - 1].index(needle) + 1)


# --------------------------------------------------------------------------- hostile input


def test_oversized_file_is_refused_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n" + b"# padding\n" * (1024 * 1024)
    assert len(data) > 10 * 1024 * 1024

    def no_parsing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an oversized file was handed to the YAML parser")

    monkeypatch.setattr(yaml, "CSafeLoader", no_parsing)
    monkeypatch.setattr(yaml, "parse", no_parsing)
    (manifests, diagnostics), peak = traced(lambda: load_file(RevisionFile("big.yaml", len(data), data)))
    assert manifests == []
    assert codes(diagnostics) == [("GM003", 1)]
    assert f"{len(data):,}" in diagnostics[0].message
    assert peak < MEMORY_BOUND


def test_oversized_file_on_disk_is_not_even_read(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    with (root / "big.yaml").open("wb") as f:
        f.write(b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
        f.truncate(10 * 1024 * 1024)
    revision = read_directory(str(root))
    assert [(f.size, f.data) for f in revision.files] == [(10 * 1024 * 1024, b"")]
    validated = pipeline.check(revision)
    assert codes(validated.diagnostics) == [("GM003", 1)]
    assert validated.desired == ()


@pytest.mark.parametrize("document", ["", "{}\n", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"])
def test_too_many_documents_are_refused_and_say_so(document: str) -> None:
    """200,000 documents in a file once planned as "No changes": now the file is refused, by name."""
    manifests, diagnostics = load(("---\n" + document) * (MAX_DOCUMENTS + 1), "mesh/many.yaml")
    assert manifests == []
    assert [(d.location.file, d.code) for d in diagnostics] == [("mesh/many.yaml", "GM009")]
    assert f"more than {MAX_DOCUMENTS:,} documents" in diagnostics[0].message
    assert CODES["GM009"].severity.value == "error"
    manifests, diagnostics = load(("---\n" + document) * MAX_DOCUMENTS)
    assert "GM009" not in [d.code for d in diagnostics]


def test_file_at_the_size_limit_is_parsed() -> None:
    head = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n# "
    text = head + "x" * (MAX_FILE_BYTES - len(head) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    manifests, diagnostics = load(text)
    assert diagnostics == []
    assert [m.obj["metadata"]["name"] for m in manifests] == ["shop"]
    manifests, diagnostics = load(text + " ")
    assert codes(diagnostics) == [("GM003", 1)]


def _deep_alias_bomb() -> str:
    """Each anchor is a list of two aliases of the one before: 2**60 values once expanded."""
    return "a0: &a0 [lol, lol]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 61))


def _wide_alias_bomb() -> str:
    """The billion laughs: nine levels of ten aliases each."""
    return (
        "a: &a ["
        + ",".join(["lol"] * 10)
        + "]\n"
        + "".join(
            f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )


def _mapping_alias_bomb() -> str:
    return "a0: &a0 {x: lol, y: lol}\n" + "".join(
        f"a{i}: &a{i} {{left: *a{i - 1}, right: *a{i - 1}}}\n" for i in range(1, 61)
    )


def _indentation(levels: int) -> str:
    """Mappings nested by indentation alone, one column per level: no bracket, no dash."""
    return "".join(" " * i + "k:\n" for i in range(levels)) + " " * levels + "v\n"


# name: (input, expected [(code, line or None)])
HOSTILE: dict[str, tuple[str | bytes, list[tuple[str, int | None]]]] = {
    "nul-bytes": (b"apiVersion: v1\nkind: Namespace\n" + b"\x00\x01\x02\xff" * 1000, [("GM002", 1)]),
    "utf-16": ("apiVersion: v1\nkind: Namespace\n".encode("utf-16"), [("GM002", 1)]),
    "invalid-utf8": (b"apiVersion: v1\nkind: Namespace\nmetadata: {name: caf\xe9}\n", [("GM002", 3)]),
    "truncated-utf8": (b"apiVersion: v1\nkind: Namespace\nmetadata: {name: caf\xc3", [("GM002", 3)]),
    # libyaml 0.2.6 (PyYAML 6.0.4) refuses these two itself, 0.2.5 leaves them to gitmesh: one diagnostic.
    "flow-sequences-100k-open": ("[" * 100_000, [("GM004", 1)]),
    "flow-sequences-100k": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", [("GM004", 1)]),
    "flow-mappings-100k": ("{a: " * 100_000, [("GM004", 1)]),
    "block-sequences-100k": ("- " * 100_000 + "x\n", [("GM004", 1)]),
    "block-sequences-100k-lines": ("- " * 100_000 + "\n" + "- x\n" * 10, [("GM004", 1)]),
    "indentation-1900": (_indentation(1900), [("GM004", MAX_DEPTH + 2)]),
    "alias-bomb-deep": (_deep_alias_bomb(), [("GM005", None)]),
    "alias-bomb-wide": (_wide_alias_bomb(), [("GM005", None)]),
    "alias-bomb-mappings": (_mapping_alias_bomb(), [("GM005", None)]),
    "self-alias-sequence": ("a: &a [x, *a]\n", [("GM005", 1)]),
    "self-alias-mapping": (
        "apiVersion: v1\nkind: Namespace\nmetadata: &m {name: shop, m: *m}\n",
        [("GM005", 3)],
    ),
    "self-alias-nested": ("a: &a {b: [{c: *a}]}\n", [("GM005", 1)]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused_within_bounds(name: str) -> None:
    text, expected = HOSTILE[name]
    f = source(text)
    (manifests, diagnostics), peak = traced(lambda: load_file(f))
    assert manifests == []
    assert [d.code for d in diagnostics] == [code for code, _ in expected], codes(diagnostics)
    for d, (_, line) in zip(diagnostics, expected, strict=True):
        assert line is None or d.location.line == line, d
    assert peak < MEMORY_BOUND, f"peak {peak:,} bytes"


def test_too_many_values_are_refused_before_composing() -> None:
    f = source("-\n" * (MAX_VALUES + 1_000))
    (_, diagnostics), peak = traced(lambda: load_file(f))
    assert [d.code for d in diagnostics] == ["GM005"]
    assert peak < MEMORY_BOUND, f"peak {peak:,} bytes"


@pytest.mark.timeout(2)
def test_merge_key_bomb_is_bounded() -> None:
    text = "a0: &a0 {x: 1}\n" + "".join(
        f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: 1}}\n" for i in range(1, 40)
    )
    (_, diagnostics), peak = traced(lambda: load(text))
    assert all(d.code == "GM005" for d in diagnostics)
    assert peak < MEMORY_BOUND


def test_long_merge_chain_does_not_recurse() -> None:
    text = "a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i}\n  <<: *a{i - 1}\n" for i in range(1, 1200))
    crash = None
    try:
        manifests, diagnostics = load(text)
    except RecursionError as e:  # kept out of the report: its traceback has a thousand frames
        crash = repr(e)
    assert crash is None, crash
    assert diagnostics == []
    assert manifests[0].obj["a1199"] == {"x": 1}


def test_nesting_limit() -> None:
    """Values may sit MAX_DEPTH fields/items below the document, not deeper."""
    manifests, diagnostics = load("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    assert diagnostics == []
    assert len(manifests) == 1
    text = "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n"
    _, diagnostics = load(text)
    assert [(d.code, d.location) for d in diagnostics] == [("GM004", Location("m.yaml", 1, 4 + MAX_DEPTH))]
    assert diagnostics[0].path == "a" + "[0]" * MAX_DEPTH


def test_nesting_limit_does_not_depend_on_unrelated_text() -> None:
    nested = "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    padded = nested + "# " + "- " * 2_100 + "\n"
    assert codes(load(nested)[1]) == codes(load(padded)[1]) == []


@pytest.mark.parametrize("value", ["!!int eighty", "!!int ''", "!!float abc", "!!bool maybe", "9" * 5_000])
def test_impossible_scalars_become_diagnostics(value: str) -> None:
    manifests, diagnostics = load(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\nx: {value}\n")
    assert manifests == []
    assert [(d.code, d.location.line, d.path) for d in diagnostics] == [("GM006", 4, "x")]


# --------------------------------------------------------------------------- positions

SPLIT = """\
# the split
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: web
  namespace: shop
spec:
  service: web
  backends:
  - service: web-v1
    weight: 90
  - {service: web-v2, weight: 10}
"""


def test_positions_of_nested_fields_and_list_items() -> None:
    [m], diagnostics = load(SPLIT)
    assert diagnostics == []
    assert m.location == Location("m.yaml", 2, 1)
    assert m.locate(("metadata", "namespace")) == at(SPLIT, 6, "namespace")
    assert m.locate(("spec", "backends")) == at(SPLIT, 9, "backends")
    assert m.locate(("spec", "backends", 0)) == at(SPLIT, 10, "service")
    assert m.locate(("spec", "backends", 0, "weight")) == at(SPLIT, 11, "weight")
    assert m.locate(("spec", "backends", 1)) == at(SPLIT, 12, "{")
    assert m.locate(("spec", "backends", 1, "weight")) == at(SPLIT, 12, "weight")


def test_locate_falls_back_to_the_nearest_known_parent() -> None:
    [m], _ = load(SPLIT)
    assert m.locate(("spec", "backends", 1, "no-such-field")) == m.locate(("spec", "backends", 1))
    assert m.locate(("spec", "backends", 7)) == m.locate(("spec", "backends"))
    assert m.locate(("no-such-field",)) == m.location
    assert m.locate(()) == m.location


def test_positions_with_crlf_line_endings_and_a_byte_order_mark() -> None:
    text = "\ufeff" + SPLIT.replace("\n", "\r\n")
    [m], diagnostics = load(text)
    assert diagnostics == []
    assert m.locate(("spec", "backends", 0, "weight")) == at(SPLIT, 11, "weight")


def test_validation_points_at_the_field() -> None:
    text = SPLIT.replace("weight: 90", "weight: -90")
    validated = validate(*load(text))
    assert [(d.code, d.location, d.path) for d in validated.diagnostics] == [
        ("GM020", at(text, 11, "weight"), "spec.backends[0].weight")
    ]


MULTI = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
# the service
apiVersion: v1
kind: Service
metadata:
  name: web
...
---
{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}
"""


def test_multi_document_files() -> None:
    manifests, diagnostics = load(MULTI)
    assert diagnostics == []
    assert [(m.obj["kind"], m.location.line) for m in manifests] == [
        ("Namespace", 1),
        ("Service", 6),
        ("ServiceAccount", 12),
    ]
    assert manifests[1].locate(("metadata", "name")) == at(MULTI, 9, "name")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n# x\n"])
def test_files_without_documents_load_to_nothing(text: str) -> None:
    assert load(text) == ([], [])


def test_empty_documents_are_skipped() -> None:
    text = "---\n# nothing here yet\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
    manifests, diagnostics = load(text)
    assert diagnostics == []
    assert [m.location.line for m in manifests] == [4]


LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: shop
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec:
    ports:
    - port: 80
"""


def test_list_items_become_manifests_with_their_own_positions() -> None:
    manifests, diagnostics = load(LIST)
    assert diagnostics == []
    ns, svc = manifests
    assert (ns.obj["kind"], ns.location) == ("Namespace", at(LIST, 4, "apiVersion"))
    assert (svc.obj["kind"], svc.location) == ("Service", at(LIST, 8, "apiVersion"))
    assert ns.locate(("metadata", "name")) == at(LIST, 7, "name")
    assert svc.locate(("metadata", "name")) == at(LIST, 10, "name")
    assert svc.locate(("spec", "ports", 0, "port")) == at(LIST, 13, "port")
    assert not any(p and p[0] == "items" for m in manifests for p in m.positions)
    assert svc.obj["metadata"]["namespace"] == "shop"  # inferred from the Namespace item
    assert validate(manifests).diagnostics == ()


def test_list_item_that_is_not_an_object() -> None:
    text = LIST + "- 42\n"
    manifests, diagnostics = load(text)
    assert len(manifests) == 2
    assert [(d.code, d.location) for d in diagnostics] == [("GM008", at(text, 14, "42"))]


# --------------------------------------------------------------------------- namespaces

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n"
SERVICE = "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n"


def test_objects_without_namespace_take_the_single_namespace_of_their_file() -> None:
    text = NAMESPACE % "shop" + SERVICE % "web" + "---\n" + SERVICE % "api" + "  namespace: other\n"
    manifests, diagnostics = load(text)
    assert diagnostics == []
    assert [(m.obj["kind"], m.obj["metadata"].get("namespace")) for m in manifests] == [
        ("Namespace", None),
        ("Service", "shop"),
        ("Service", "other"),
    ]
    assert validate(manifests).diagnostics == ()


def test_two_namespaces_in_a_file_leave_objects_without_one() -> None:
    text = NAMESPACE % "shop" + NAMESPACE % "staging" + SERVICE % "web"
    manifests, diagnostics = load(text)
    assert diagnostics == []
    assert "namespace" not in manifests[2].obj["metadata"]
    validated = validate(manifests)
    assert [(d.code, d.location, d.path) for d in validated.diagnostics] == [
        ("GM122", at(text, 11, "metadata"), "metadata.namespace")
    ]


def test_a_namespace_in_another_file_is_not_inferred() -> None:
    loaded = load_files(
        [source((NAMESPACE % "shop").removesuffix("---\n"), "ns.yaml"), source(SERVICE % "web", "svc.yaml")]
    )
    validated = validate(loaded.manifests, loaded.diagnostics)
    assert [(d.code, d.location.file) for d in validated.diagnostics] == [("GM122", "svc.yaml")]


# --------------------------------------------------------------------------- values


def test_timestamps_stay_strings() -> None:
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
        "  creationTimestamp: 2024-01-02T03:04:05Z\n  annotations: {released: 2024-01-02}\n"
    )
    [m], diagnostics = load(text)
    assert diagnostics == []
    assert m.obj["metadata"]["creationTimestamp"] == "2024-01-02T03:04:05Z"
    assert m.obj["metadata"]["annotations"]["released"] == "2024-01-02"
    assert validate([m]).diagnostics == ()


def test_yaml_1_1_scalars() -> None:
    [m], diagnostics = load(
        "hex: 0x1F\nbinary: 0b101\noctal: 017\nunderscores: 1_000\nquoted: '0x1F'\n"
        "float: 1.5\nyes: yes\nnull: ~\n"
    )
    assert diagnostics == []
    assert m.obj == {
        "hex": 31,
        "binary": 5,
        "octal": 15,
        "underscores": 1000,
        "quoted": "0x1F",
        "float": 1.5,
        "yes": True,
        "null": None,
    }
    assert type(m.obj["hex"]) is int


def test_non_finite_floats_are_refused() -> None:
    for value in (".inf", "-.Inf", ".nan", "1.0e+999"):
        _, diagnostics = load(f"a:\n  b: {value}\n")
        assert [(d.code, d.location.line, d.path) for d in diagnostics] == [("GM006", 2, "a.b")], value


def test_merge_keys() -> None:
    text = """\
base: &base {app: web, team: payments, tier: front}
more: &more {team: checkout, zone: a}
merged:
  <<: [*base, *more]
  tier: back
"""
    [m], diagnostics = load(text)
    assert diagnostics == []
    # explicit keys win; among merged mappings the first one listed wins
    assert m.obj["merged"] == {"app": "web", "team": "payments", "tier": "back", "zone": "a"}
    assert m.locate(("merged", "tier")) == at(text, 5, "tier")


@pytest.mark.parametrize(
    "text",
    ["a: &a {b: 1, <<: *a}\n", "s: &s shop\nm: {<<: *s}\n", "m: {<<: [[1, 2]]}\n"],
    ids=["cyclic", "scalar", "list-of-list"],
)
def test_merge_keys_that_do_not_merge_a_mapping(text: str) -> None:
    manifests, diagnostics = load(text)
    assert manifests == []
    assert [d.code for d in diagnostics] == ["GM006"]


def test_json_files_may_indent_with_tabs() -> None:
    text = '{\n\t"apiVersion": "v1",\n\t"kind": "Namespace",\n\t"metadata": {\n\t\t"name": "shop"\n\t}\n}\n'
    [m], diagnostics = load(text, "ns.json")
    assert diagnostics == []
    assert m.locate(("metadata", "name")) == Location("ns.json", 5, 3)


def test_a_tab_in_yaml_indentation_is_named() -> None:
    _, diagnostics = load("apiVersion: v1\nmetadata:\n\tname: shop\n")
    assert [(d.code, d.location) for d in diagnostics] == [("GM001", Location("m.yaml", 3, 1))]
    assert "tab" in diagnostics[0].message


def test_documents_before_a_syntax_error_still_load() -> None:
    text = NAMESPACE % "shop" + "apiVersion: v1\nkind: [\n"
    manifests, diagnostics = load(text)
    assert [m.obj["kind"] for m in manifests] == ["Namespace"]
    assert [d.code for d in diagnostics] == ["GM001"]


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=300, deadline=None, database=None)


def _check_well_formed(result: tuple[list[Manifest], list[Diagnostic]]) -> None:
    manifests, diagnostics = result
    assert all(isinstance(m, Manifest) and isinstance(m.obj, dict) for m in manifests)
    for d in diagnostics:
        assert d.code in CODES
        assert d.location.line >= 1
        assert d.location.column >= 1


@PROPERTY
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _check_well_formed(load(text.encode("utf-8", "surrogatepass")))


@PROPERTY
@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_well_formed(load(data))


# fmt: off
YAML_TOKENS = [
    "- ", "[", "]", "{", "}", ": ", ", ", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "!x ", "!!str ", "!!null ",
    "\n", "  ", "\t", "'", '"', "#", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "~", "a", "1", "0x1F",
    ".inf", "2024-01-01", "apiVersion: v1\n", "kind: Namespace\n", "kind: Service\n", "kind: List\nitems:\n",
    "metadata: ", "name: ", "namespace: ", "spec: ", "ports: ", "port: ",
    "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n", "service: ", "backends: ", "weight: ",
]
# fmt: on


@PROPERTY
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join))
@example("kind: Namespace\nmetadata:\n")
@example("kind: Namespace\nmetadata: shop\n")
@example("a: !!int x\n")
def test_yaml_shaped_text_never_raises(text: str) -> None:
    """Text made of YAML's own punctuation and manifest keys reaches deeper than random text does."""
    result = load(text)
    _check_well_formed(result)
    validate(*result)
