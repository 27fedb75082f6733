"""The object port: what gitmesh needs of a cluster, kept alike by the embedded store and Kubernetes."""

from __future__ import annotations

import builtins
import copy
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gitmesh.cluster.inventory import ChangeSet
from gitmesh.errors import ClusterError
from gitmesh.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE, Conflict, ObjectRef


@dataclass(frozen=True)
class Live:
    """A live object as the cluster returns it, server-set fields included."""

    obj: dict[str, Any]
    resource_version: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Live:
        """A live object as the API server returns it: its version is in its metadata."""
        return cls(obj, str(obj["metadata"].get("resourceVersion", "")))


@dataclass(frozen=True)
class Prediction:
    """An object as it would be stored if applied now (forced, when another manager owns some of
    its fields: then ``conflict`` names them)."""

    obj: dict[str, Any]
    conflict: Conflict | None = None


@dataclass(frozen=True)
class Changes:
    """What one apply is asked to do: ``writes`` in apply order, then ``deletes`` in order.
    ``unchanged`` objects are declared and left as they are; those in ``force`` take their fields
    back from other field managers."""

    writes: tuple[Mapping[str, Any], ...] = ()
    deletes: tuple[ObjectRef, ...] = ()
    unchanged: frozenset[ObjectRef] = frozenset()
    force: frozenset[ObjectRef] = frozenset()


@dataclass(frozen=True)
class StatusWrite:
    """An object's new status, computed from its version ``resource_version``: written over that
    version only, so that an entry another controller wrote meanwhile is never lost."""

    ref: ObjectRef
    resource_version: str
    status: Mapping[str, Any]


class ObjectsFailed(ClusterError):
    """The server refused some objects of a dry-run or an apply; ``failures`` has one error per object."""

    def __init__(self, verb: str, failures: Sequence[ClusterError], lines: Sequence[str] = ()) -> None:
        self.verb, self.failures = verb, failures
        said = "\n".join(lines or [f"  {f}" for f in failures])  # ``lines``: each failure told with its file
        super().__init__(f"{len(failures)} object(s) could not be {verb}:\n{said}")


class Watched(Protocol):
    """A cluster's objects, kept current: every object the mesh reads (everyone's, not only
    gitmesh's), and a version that changes whenever any of them does."""

    def version(self) -> str: ...

    def list(self) -> Mapping[ObjectRef, Live]: ...


class ObjectPort(Protocol):
    """One cluster's objects: all gitmesh reads and writes there. It knows nothing of gitmesh's own
    state (inventories, records, rollouts): that is kept in the state stores."""

    def describe(self) -> str:
        """Where objects go, for plans and logs: ``local:/path/store.db``, ``kube:<context> at <server>``."""

    def list(self, refs: Collection[ObjectRef] | None = None) -> dict[ObjectRef, Live]:
        """Every live object of the kinds gitmesh manages that carries its managed-by label; with
        ``refs``, those of these objects that exist, whoever made them."""

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> builtins.list[Prediction]:
        """Each object as it would be stored if applied now, defaults filled in, in order."""

    def apply(self, changes: Changes) -> ChangeSet:
        """Write ``changes.writes`` in order, then delete ``changes.deletes`` in order, stopping at
        the first kind with a refusal; the refusals are in the change set, not raised."""

    def write_status(self, writes: Sequence[StatusWrite]) -> builtins.list[ClusterError]:
        """Write each object's status (its status subresource, whoever made the object); returns
        what was not written: the object changed or went meanwhile, or the server refused."""

    def watch(self) -> Watched:
        """The cluster's objects, followed from now on."""

    def contents(self, namespace: str) -> builtins.list[ObjectRef]:
        """Every object in ``namespace``, whoever made it: what deleting the Namespace takes with it."""


def owned(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` carrying the managed-by label that marks it as gitmesh's."""
    out = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    return out


def is_owned(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def content_hash(obj: Mapping[str, Any]) -> str:
    """Identifies a manifest's content: equal hashes, equal manifests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
