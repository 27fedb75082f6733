"""The fast schema check (fastjsonschema) and the reporting one (jsonschema) must agree.

``schema.is_valid`` lets nearly every object skip jsonschema; if it ever called
an invalid object valid, an error would go unreported. Here both judge objects
generated from every schema, valid ones and randomly damaged ones.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from gitmesh.plan import schema

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(-2, 2, allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@functools.cache
def valid_objects(api_version: str, kind: str) -> st.SearchStrategy[Any]:
    return from_schema(inlined(api_version, kind))


def inlined(api_version: str, kind: str) -> dict[str, Any]:
    doc = schema.schema_document(api_version, kind)
    assert doc is not None
    doc["properties"]["metadata"] = schema.objectmeta_document()
    doc.pop("$id", None)
    for key in ("$schema", "$id"):
        doc["properties"]["metadata"].pop(key, None)
    return doc


def agree(api_version: str, kind: str, obj: Any) -> None:
    validator = schema.validator_for(api_version, kind)
    assert validator is not None
    errors = list(validator.iter_errors(obj))
    assert schema.is_valid(api_version, kind, obj) == (not errors), (obj, [e.message for e in errors])


def damage(obj: Any, data: st.DataObject) -> Any:
    """Replace one value somewhere in ``obj`` with arbitrary JSON, or drop or add a key."""
    obj = copy.deepcopy(obj)
    node = obj
    while True:
        children = (
            list(node.items())
            if isinstance(node, dict)
            else list(enumerate(node))
            if isinstance(node, list)
            else []
        )
        if not children or data.draw(st.booleans()):
            break
        key, child = data.draw(st.sampled_from(children))
        if not isinstance(child, dict | list) or data.draw(st.booleans()):
            action = data.draw(st.sampled_from(["replace", "drop", "add"]))
            if action == "replace":
                node[key] = data.draw(JSON)
            elif action == "drop" and isinstance(node, dict):
                del node[key]
            elif isinstance(node, dict):
                node[data.draw(st.text(max_size=8))] = data.draw(JSON)
            return obj
        node = child
    return obj


KINDS = sorted(schema.known_kinds())


@pytest.mark.parametrize(("api_version", "kind"), KINDS, ids=[f"{v}/{k}" for v, k in KINDS])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fast_and_full_checks_agree(api_version: str, kind: str, data: st.DataObject) -> None:
    obj = data.draw(valid_objects(api_version, kind))
    agree(api_version, kind, obj)
    agree(api_version, kind, damage(obj, data))


def test_they_agree_on_the_examples_and_the_broken_corpus() -> None:
    root = Path(__file__).resolve().parents[2]
    checked = 0
    for path in [
        *sorted((root / "examples").rglob("*.yaml")),
        *sorted((root / "tests/corpus").rglob("*.yaml")),
    ]:
        try:
            docs = list(yaml.safe_load_all(path.read_bytes()))
        except (yaml.YAMLError, ValueError):
            continue
        for obj in docs:
            if isinstance(obj, dict) and (obj.get("apiVersion"), obj.get("kind")) in schema.known_kinds():
                agree(obj["apiVersion"], obj["kind"], obj)
                checked += 1
    assert checked > 40
