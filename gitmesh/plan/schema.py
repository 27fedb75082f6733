"""JSON Schemas for every manifest kind gitmesh reads, and their compiled validators.

The schemas are YAML files shipped inside the package, one per kind and
version read (``apis.kinds``), at ``schemas/<group>/<version>/<Kind>.yaml`` (``core`` stands for the
core API group, whose apiVersion is just the version). Each is a draft 2020-12
JSON Schema for the whole object; they all share ``schemas/objectmeta.yaml``
through ``$ref: urn:gitmesh:objectmeta``. See ``schemas/README.md`` for the
strictness rules and the places where gitmesh is deliberately tighter than the
upstream SMI CRDs.

Everything is read and compiled once per process. Format checking is off:
``format`` keywords are documentation, real checks are written as patterns.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema.protocols
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from gitmesh.apis import kinds

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
OBJECTMETA_URI = "urn:gitmesh:objectmeta"
_OBJECTMETA_FILE = "objectmeta.yaml"
_CORE_GROUP = "core"

Key = tuple[str, str]  # (apiVersion, kind)


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        doc = yaml.load(f, Loader=yaml.CSafeLoader)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a schema file must hold a mapping")
    return doc


def schema_path(group: str, version: str, kind: str) -> Path:
    """Where the schema of ``kind`` at ``version`` of ``group`` ("" for the core group) is."""
    return SCHEMA_DIR / (group or _CORE_GROUP) / version / f"{kind}.yaml"


def _api_version(group: str, version: str) -> str:
    return version if group == _CORE_GROUP else f"{group}/{version}"


@functools.cache
def _documents() -> dict[Key, dict[str, Any]]:
    """The schema of every kind at every version read, keyed by (apiVersion, kind). (The tests check
    each against the metaschema.)"""
    docs: dict[Key, dict[str, Any]] = {}
    for kind in kinds.KINDS:
        for version in kind.read:
            path = schema_path(kind.group, version, kind.name)
            key = (_api_version(kind.group or _CORE_GROUP, version), kind.name)
            doc = _read_yaml(path)
            declared = (
                doc.get("properties", {}).get("apiVersion", {}).get("const"),
                doc.get("properties", {}).get("kind", {}).get("const"),
            )
            if declared != key:
                raise ValueError(f"{path}: declares apiVersion/kind {declared}, but its path says {key}")
            docs[key] = doc
    return docs


@functools.cache
def _registry() -> Registry:
    objectmeta = _read_yaml(SCHEMA_DIR / _OBJECTMETA_FILE)
    registry: Registry = Registry().with_resource(OBJECTMETA_URI, DRAFT202012.create_resource(objectmeta))
    return registry


@functools.cache
def _validators() -> dict[Key, jsonschema.protocols.Validator]:
    registry = _registry()
    return {key: Draft202012Validator(doc, registry=registry) for key, doc in _documents().items()}


@functools.cache
def _fast_check(key: Key) -> Callable[[Any], Any]:
    meta = objectmeta_document()
    return fastjsonschema.compile(copy.deepcopy(_documents()[key]), handlers={"urn": lambda _uri: meta})


def is_valid(api_version: str, kind: str, obj: Any) -> bool:
    """Whether ``obj`` passes its kind's schema, fast: a compiled check, no error collection.

    jsonschema walks every keyword in Python; on a large repo that is most of
    validation's time. Valid objects (nearly all) stop here; the rest go to
    ``validator_for`` for every error with its path. A property test keeps the
    two in agreement.
    """
    key = (api_version, kind)
    if key not in _documents():
        return False
    try:
        _fast_check(key)(obj)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def validator_for(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """The compiled validator for this apiVersion/kind, or None if gitmesh does not know it."""
    return _validators().get((api_version, kind))


def known_kinds() -> frozenset[tuple[str, str]]:
    """Every (apiVersion, kind) that has a schema."""
    return frozenset(_documents())


def versions_read(kind: str) -> dict[str, list[str]]:
    """The apiVersions gitmesh reads ``kind`` at, by API group ("" for the core group), oldest first."""
    out: dict[str, list[str]] = {}
    for api_version, k in sorted(_documents()):
        if k == kind:
            out.setdefault(api_version.rpartition("/")[0], []).append(api_version)
    return out


def schema_document(api_version: str, kind: str) -> dict[str, Any] | None:
    """A copy of the raw schema for this apiVersion/kind (it still holds ``$ref``s), or None."""
    doc = _documents().get((api_version, kind))
    return copy.deepcopy(doc) if doc is not None else None


def objectmeta_document() -> dict[str, Any]:
    """A copy of the shared metadata schema that every kind refers to as ``urn:gitmesh:objectmeta``."""
    return copy.deepcopy(_registry().contents(OBJECTMETA_URI))
