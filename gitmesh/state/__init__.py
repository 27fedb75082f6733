"""gitmesh's own state, apart from the objects it manages: small stores, each kept in the embedded
store (``embedded``) or in the cluster (``kube``) alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from gitmesh.cluster.inventory import Applied
from gitmesh.objects import ObjectRef
from gitmesh.state.records import SourceRecord

if TYPE_CHECKING:  # the CA's store (and cryptography) load with the stores that hold one
    from gitmesh.certs.store import Keeper


@dataclass(frozen=True)
class SourceStatus:
    source: str
    revision: str | None = None
    ref: str = ""
    applied_at: datetime | None = None
    objects: Mapping[str, int] = field(default_factory=dict)  # kind -> count in the inventory
    last_error: str = ""
    last_error_at: datetime | None = None


class Inventories(Protocol):
    """What each source applied last (the only objects its prune may delete), and how it went."""

    def get(self, source: str) -> dict[ObjectRef, Applied]: ...

    def save(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        """Keep what ``source`` applied; ``revision`` None after a failure keeps the last applied one."""

    def record_error(self, source: str, message: str) -> None:
        """Remember why the last attempt for ``source`` failed (shown by ``gitmesh status``)."""

    def status(self) -> list[SourceStatus]: ...


class Records(Protocol):
    """The controller's conditions and history per source, and which sources are suspended."""

    def save(self, record: SourceRecord) -> None:
        """Keep one source's record (replacing the previous)."""

    def all(self) -> list[SourceRecord]:
        """Every source's record, by source name."""

    def set_suspended(self, source: str, suspended: bool) -> None:
        """Mark ``source`` suspended (the controller leaves it alone) or not; kept apart from the
        record so that the controller writing its record never undoes a suspend."""

    def suspended(self) -> frozenset[str]: ...


class Rollouts(Protocol):
    """Every rollout's state (``gitmesh.rollout``), by split (``namespace/name``); it survives
    restarts of whatever drives it."""

    def all(self) -> dict[str, dict[str, Any]]: ...

    def save(self, split: str, record: Mapping[str, Any]) -> None: ...


class XdsReports(Protocol):
    """What ``gitmesh run`` last saw of its sidecars (connected, rejections), for ``gitmesh status``."""

    def save(self, report: Mapping[str, Any]) -> None: ...

    def latest(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class StateStores:
    inventories: Inventories
    records: Records
    rollouts: Rollouts
    xds: XdsReports
    ca: Keeper  # the mesh CA
