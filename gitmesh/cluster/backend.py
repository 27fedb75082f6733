"""The contract every cluster backend keeps: the embedded store and Kubernetes alike."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gitmesh.certs.store import Keeper
from gitmesh.cluster.records import SourceRecord
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
class Applied:
    """An inventory entry: what gitmesh last applied for an object, and the version that produced."""

    hash: str  # content_hash of the manifest sent
    resource_version: str


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

    def apply(
        self,
        source: str,
        revision: str | None,
        ref: str,
        objects: Sequence[Mapping[str, Any]],
        deletes: Sequence[ObjectRef],
        keep: Mapping[ObjectRef, Applied],
        *,
        force: frozenset[ObjectRef] = frozenset(),
    ) -> None:
        """Write ``objects`` in order, then delete ``deletes`` in order.

        Objects in ``force`` take their fields back from other field managers.

        The new inventory is ``keep`` plus every object written; on failure it
        still lists exactly what is applied, and the error names what failed.
        """

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


def stale(
    inventory: Iterable[ObjectRef], live: Collection[ObjectRef], declared: Collection[ObjectRef]
) -> list[ObjectRef]:
    """What prune deletes, for every backend: objects the source applied that are still live and
    that the revision no longer declares. ``declared`` holds every object of the revision, whatever
    its version and whether or not it validated: an object still written in Git is never deleted,
    whatever else went wrong."""
    return [ref for ref in inventory if ref in live and ref not in declared]


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
