"""The contract every cluster backend keeps: the embedded store and Kubernetes alike."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gitmesh.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectRef


@dataclass(frozen=True)
class Live:
    """A live object as the backend returns it, server-set fields included."""

    obj: dict[str, Any]
    resource_version: str


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
        """Where objects go, for plans and logs: ``local:/path/store.db``."""

    def list_managed(self) -> dict[ObjectRef, Live]:
        """Every live object that carries gitmesh's managed-by label."""

    def inventory(self, source: str) -> frozenset[ObjectRef]:
        """What ``source`` applied last: the only objects its prune may delete."""

    def dry_run(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The object as it would be stored if applied now, defaults filled in."""

    def apply(
        self,
        source: str,
        revision: str | None,
        ref: str,
        objects: Sequence[Mapping[str, Any]],
        deletes: Sequence[ObjectRef],
        inventory: frozenset[ObjectRef],
    ) -> None:
        """Write ``objects`` in order, delete ``deletes`` in order, record the inventory and revision."""

    def record_error(self, source: str, message: str) -> None:
        """Remember why the last attempt for ``source`` failed (shown by ``gitmesh status``)."""

    def status(self) -> list[SourceStatus]: ...


def owned(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` carrying the managed-by label that marks it as gitmesh's."""
    out = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    return out


def is_owned(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def fingerprint(live: Mapping[ObjectRef, Live], inventory: frozenset[ObjectRef]) -> str:
    """Identifies the live state a plan was made against: any write or inventory change alters it."""
    h = hashlib.sha256()
    for ref in sorted(live):
        h.update(f"{ref.group}/{ref}@{live[ref].resource_version}\n".encode())
    h.update(b"--\n")
    for ref in sorted(inventory):
        h.update(f"{ref.group}/{ref}\n".encode())
    return h.hexdigest()
