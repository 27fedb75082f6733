"""Object identity and source locations: the leaf every other module builds on.

An object's identity is its API group, kind, namespace and name. The version is
not part of it: a TrafficSplit written as v1alpha2 in Git and stored as
v1alpha4 in a cluster is one object.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "gitmesh"


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Who an object is: group ("" for the core group), kind, namespace ("" if cluster-scoped), name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The identity of a well-formed object (apiVersion, kind and metadata.name present)."""
        api_version = str(obj.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        meta = obj.get("metadata") or {}
        return cls(
            group, str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", ""))
        )


@dataclass(frozen=True, order=True)
class Location:
    """A place in the source: repo-relative file path, 1-based line and column."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Conflict:
    """Fields of an object that another field manager owns: an apply takes them only when forced.
    ``fields`` are the paths as the cluster names them (``.spec.backends``); ``detail`` is its
    explanation, for people only."""

    fields: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class Manifest:
    """One object as written in the source, with where it was written.

    ``positions`` maps a field path (("spec", "backends", 0, "weight")) to the
    (line, column) where that field starts in ``location.file``, so every
    diagnostic can point at the exact line. Plain tuples, not Locations: a large
    repo has hundreds of thousands of them, and tuples of ints cost the garbage
    collector nothing.
    """

    obj: dict[str, Any]
    location: Location
    positions: Mapping[Path, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    converted_from: str = ""  # the apiVersion as written, when gitmesh converted it to the served one
    # When converted: the object as written, for diffs to show how a field was written.
    written: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def ref(self) -> ObjectRef:
        return ObjectRef.of(self.obj)

    def locate(self, path: Path) -> Location:
        """The closest known location of ``path``: the field itself, else its nearest parent."""
        for end in range(len(path), 0, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return Location(self.location.file, *pos)
        return self.location
