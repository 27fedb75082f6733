"""The contract every cluster backend keeps: the embedded store and Kubernetes alike."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gitmesh.certs.store import Keeper
from gitmesh.cluster.inventory import Applied, ChangeSet, next_inventory
from gitmesh.cluster.records import SourceRecord
from gitmesh.errors import ClusterError
from gitmesh.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectRef


@dataclass(frozen=True)
class Live:
    """A live object as the backend returns it, server-set fields included."""

    obj: dict[str, Any]
    resource_version: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Live:
        """A live object as the API server returns it: its version is in its metadata."""
        return cls(obj, str(obj["metadata"].get("resourceVersion", "")))


@dataclass(frozen=True)
class Prediction:
    """An object as it would be stored if applied now; ``conflict`` names fields another manager owns."""

    obj: dict[str, Any]
    conflict: str = ""


@dataclass(frozen=True)
class SourceStatus:
    source: str
    revision: str | None = None
    ref: str = ""
    applied_at: datetime | None = None
    objects: Mapping[str, int] = field(default_factory=dict)  # kind -> count in the inventory
    last_error: str = ""
    last_error_at: datetime | None = None


@dataclass(frozen=True)
class Changes:
    """What one apply is asked to do: ``writes`` in apply order, then ``deletes`` in order.
    ``unchanged`` objects are declared and left as they are; those in ``force`` take their fields
    back from other field managers."""

    writes: tuple[Mapping[str, Any], ...] = ()
    deletes: tuple[ObjectRef, ...] = ()
    unchanged: frozenset[ObjectRef] = frozenset()
    force: frozenset[ObjectRef] = frozenset()


class ObjectsFailed(ClusterError):
    """The server refused some objects of a dry-run or an apply; ``failures`` has one error per object."""

    def __init__(self, verb: str, failures: Sequence[ClusterError]) -> None:
        self.verb, self.failures = verb, failures
        lines = "\n".join(f"  {f}" for f in failures)
        super().__init__(f"{len(failures)} object(s) could not be {verb}:\n{lines}")


class ClusterBackend(Protocol):
    def describe(self) -> str:
        """Where objects go, for plans and logs: ``local:/path/store.db``, ``kube:context``."""

    def list_managed(self) -> dict[ObjectRef, Live]:
        """Every live object of the kinds gitmesh manages that carries its managed-by label."""

    def inventory(self, source: str) -> dict[ObjectRef, Applied]:
        """What ``source`` applied last: the only objects its prune may delete."""

    def present(self, refs: Collection[ObjectRef]) -> frozenset[ObjectRef]:
        """Which of these objects exist, whoever made them."""

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Each object as it would be stored if applied now, defaults filled in, in order."""

    def transaction(self) -> AbstractContextManager[None]:
        """Writes inside commit together where the store can (the embedded one), else one by one."""

    def apply(self, changes: Changes) -> ChangeSet:
        """Write ``changes.writes`` in order, then delete ``changes.deletes`` in order, stopping at
        the first kind with a refusal; the refusals are in the change set, not raised."""

    def save_inventory(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        """Keep what ``source`` applied; ``revision`` None (after a failure) keeps the last applied one."""

    def record_error(self, source: str, message: str) -> None:
        """Remember why the last attempt for ``source`` failed (shown by ``gitmesh status``)."""

    def status(self) -> list[SourceStatus]: ...

    def record_xds(self, report: Mapping[str, Any]) -> None:
        """Keep what ``gitmesh run`` sees of its sidecars (connected, rejections) for ``gitmesh status``."""

    def xds_report(self) -> dict[str, Any] | None: ...

    def ca_keeper(self) -> Keeper:
        """Where the mesh CA is kept: beside the embedded store, or a Secret in the cluster."""

    def save_record(self, record: SourceRecord) -> None:
        """Keep the controller's conditions and history for one source (replacing the previous)."""

    def records(self) -> list[SourceRecord]:
        """Every source's record, by source name."""

    def set_suspended(self, source: str, suspended: bool) -> None:
        """Mark ``source`` suspended (the controller leaves it alone) or not; kept apart from the
        record so that the controller writing its record never undoes a suspend."""

    def suspended(self) -> frozenset[str]: ...

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """Every rollout's persisted state (``gitmesh.rollout``), by split (``namespace/name``)."""

    def save_rollout(self, split: str, record: Mapping[str, Any]) -> None:
        """Keep one rollout's state; it survives restarts of whatever drives it."""


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


def fingerprint(live: Mapping[ObjectRef, Live], inventory: Mapping[ObjectRef, Applied]) -> str:
    """Identifies the live state a plan was made against: any write or inventory change alters it."""
    h = hashlib.sha256()
    for ref in sorted(live):
        h.update(f"{ref.group}/{ref}@{live[ref].resource_version}\n".encode())
    h.update(b"--\n")
    for ref in sorted(inventory):
        entry = inventory[ref]
        h.update(f"{ref.group}/{ref}@{entry.resource_version}#{entry.hash}\n".encode())
    return h.hexdigest()


def write(
    backend: ClusterBackend, source: str, revision: str | None, ref: str, changes: Changes
) -> ChangeSet:
    """Apply ``changes`` as ``source`` and keep its next inventory: the one path every write takes.
    The inventory is written whatever happened, so that it lists exactly what is applied; in the
    embedded store, objects and inventory commit together (a kill leaves both before or after)."""
    with backend.transaction():
        previous = backend.inventory(source)
        done = backend.apply(changes)
        error = str(ObjectsFailed("applied", list(done.failures))) if done.failures else ""
        backend.save_inventory(
            source, next_inventory(previous, done), None if error else revision, ref, error
        )
    return done
