"""An object port in a dict, for unit tests of what drives a cluster (the reconciler, rollouts)."""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.port import Changes, Live, Prediction, StatusWrite, content_hash, is_owned, owned
from gitmesh.embedded import Database
from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef
from gitmesh.settings import Settings
from gitmesh.state import embedded


class FakeObjects:
    def __init__(self) -> None:
        self.objects: dict[ObjectRef, Live] = {}
        self.writes = 0

    def describe(self) -> str:
        return "fake:"

    def list(self, refs: Collection[ObjectRef] | None = None) -> dict[ObjectRef, Live]:
        return {r: o for r, o in self.objects.items() if (r in refs if refs is not None else is_owned(o.obj))}

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> builtins.list[Prediction]:
        return [Prediction(owned(o)) for o in objects]

    def apply(self, changes: Changes) -> ChangeSet:
        applied = {}
        for obj in changes.writes:
            self.writes += 1
            body, ref = owned(obj), ObjectRef.of(obj)
            body["metadata"]["resourceVersion"] = str(self.writes)
            self.objects[ref], applied[ref] = Live.of(body), Applied(content_hash(obj), str(self.writes))
        for ref in changes.deletes:
            self.objects.pop(ref, None)
        return ChangeSet(applied, frozenset(changes.deletes), changes.unchanged)

    def contents(self, namespace: str) -> builtins.list[ObjectRef]:
        return sorted((r for r in self.objects if r.namespace == namespace), key=str)

    def write_status(self, writes: Sequence[StatusWrite]) -> builtins.list[ClusterError]:
        for w in writes:
            self.writes += 1
            body = {**self.objects[w.ref].obj, "status": dict(w.status)}
            body["metadata"] = {**body["metadata"], "resourceVersion": str(self.writes)}
            self.objects[w.ref] = Live.of(body)
        return []

    def watch(self) -> FakeObjects:
        return self

    def version(self) -> str:
        return str(self.writes)


def settings(objects: FakeObjects) -> Settings:
    """The fake cluster with state stores in memory."""
    return Settings(objects, embedded.stores(Database(":memory:", embedded.SCHEMA)))
