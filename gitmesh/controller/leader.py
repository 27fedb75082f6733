"""Leader election over a ``coordination.k8s.io`` Lease: of the controller's replicas, only the leader
fetches, applies, prunes and walks rollouts; every replica serves xDS.

The leader renews the Lease every ``RETRY_PERIOD``. Another replica takes it only after seeing the
same record unchanged for ``LEASE_DURATION`` by its own clock (so clocks need not agree), and every
write carries the resourceVersion it read, so of two replicas racing for it one gets a conflict. A
leader that has not renewed for ``RENEW_DEADLINE`` (less than the lease duration) stops leading:
``gitmesh run`` then exits at once, ending any apply under way before another replica may take
the Lease. Never two appliers; the new leader reconciles again from the inventories in the cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from gitmesh import durations
from gitmesh.errors import ClusterError
from gitmesh.install.manifests import LEADER_LABEL
from gitmesh.kube import errors
from gitmesh.kube.client import Client

log = logging.getLogger("gitmesh.leader")

LEASE = "gitmesh-leader"  # in gitmesh-system
# client-go's defaults, which kube-controller-manager and kube-scheduler use.
LEASE_DURATION = 15.0  # seconds a Lease not renewed stays its holder's
RENEW_DEADLINE = 10.0  # seconds the leader keeps leading without a renewal
RETRY_PERIOD = 2.0  # seconds between attempts to take or renew the Lease


def replica_name() -> str:
    """This replica's name among the controller's: its pod's ($POD_NAME), else the host's."""
    return os.environ.get("POD_NAME") or socket.gethostname()


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease's spec says: who holds it, for how long after ``renewed``, and how often it
    changed hands."""

    holder: str
    duration: float
    acquired: datetime
    renewed: datetime
    transitions: int


@dataclass(frozen=True)
class Observed:
    """The record last read (None: there is no Lease), its version (every write changes it), and
    when this replica first saw that version."""

    record: LeaseRecord | None
    version: str
    since: float  # this replica's monotonic clock


def observe(previous: Observed | None, record: LeaseRecord | None, version: str, now: float) -> Observed:
    """The Lease as seen at ``now``; the time it was first seen is kept while it is not written."""
    if previous is not None and previous.version == version:
        return previous
    return Observed(record, version, now)


def claim(observed: Observed, identity: str, now: float, wall: datetime) -> LeaseRecord | None:
    """The record to write to take or keep the Lease, or None while another replica holds it."""
    record = observed.record
    if record is None:
        return LeaseRecord(identity, LEASE_DURATION, wall, wall, 0)
    if record.holder == identity:
        return dataclasses.replace(record, duration=LEASE_DURATION, renewed=wall)
    if record.holder and now < observed.since + record.duration:
        return None
    return LeaseRecord(identity, LEASE_DURATION, wall, wall, record.transitions + 1)


class Leases(Protocol):
    """Where the Lease is kept: read it with its version; write it only over that version."""

    def get(self) -> tuple[LeaseRecord, str] | None: ...

    # Each returns the version written, or None: someone made it first / it changed since.
    def create(self, record: LeaseRecord) -> str | None: ...

    def replace(self, record: LeaseRecord, version: str) -> str | None: ...


class Elector:
    """Takes and keeps the Lease for ``identity``; ``leading`` is set while it holds it."""

    def __init__(
        self,
        leases: Leases,
        identity: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        announce: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self.leases = leases
        self.identity = identity
        self.leading = threading.Event()
        self.announce = announce  # tells the cluster whether this replica leads (see PodLabel)
        self._announced: bool | None = None
        self._clock = clock
        self._wall = wall
        self._observed: Observed | None = None
        self._renewed = 0.0  # when the Lease was last written as ours (monotonic)

    def attempt(self) -> bool:
        """One try to take or renew the Lease; True when this replica holds it now."""
        now = self._clock()
        try:
            current = self.leases.get()
            record, version = current if current else (None, "")
            self._observed = observe(self._observed, record, version, now)
            wanted = claim(self._observed, self.identity, now, self._wall())
            if wanted is None:
                return False
            written = self.leases.replace(wanted, version) if version else self.leases.create(wanted)
        except ClusterError as e:  # the API server may answer next time; the deadline decides
            log.warning("leader election: %s", e)
            return False
        if written is None:
            return False
        self._renewed = now
        self._observed = Observed(wanted, written, now)
        return True

    def step(self) -> bool:
        """One attempt, with what it means: False when this replica led and may lead no longer."""
        held = self.attempt()
        if held and not self.leading.is_set():
            log.info("leading: %s holds the Lease", self.identity)
            self.leading.set()
        if self.leading.is_set() and held:
            self._tell(True)
        if (
            self.leading.is_set()
            and not held
            and (self._taken() or self._clock() - self._renewed >= RENEW_DEADLINE)
        ):
            self.leading.clear()
            return False
        return True

    def release(self) -> None:
        """Give the Lease up (when this replica stops after its last apply), so that another
        replica takes it at once rather than after the lease duration."""
        if not self.leading.is_set() or self._observed is None or self._observed.record is None:
            return
        self.leading.clear()
        released = dataclasses.replace(self._observed.record, holder="", renewed=self._wall())
        try:
            self.leases.replace(released, self._observed.version)
        except ClusterError as e:  # the Lease expires on its own
            log.warning("leader election: cannot release the Lease: %s", e)

    def _taken(self) -> bool:
        """Another replica holds the Lease now (this one was too slow to renew)."""
        record = self._observed.record if self._observed else None
        return record is not None and record.holder != self.identity

    def _tell(self, leading: bool) -> None:
        """Announce ``leading`` unless it was already; a failure is tried again on the next step."""
        if self._announced is leading:
            return
        try:
            self.announce(leading)
        except ClusterError as e:
            log.warning("leader election: cannot announce that %s leads: %s", self.identity, e)
            return
        self._announced = leading

    def run(self, stopping: threading.Event, lost: Callable[[], None]) -> None:
        """Take the Lease and keep it until ``stopping``; call ``lost`` if it cannot be kept.
        A replica starts by announcing it does not lead (it may be a leader's restarted process)."""
        self._tell(False)
        while not stopping.is_set():
            if not self.step():
                log.error("leader election: %s lost the Lease", self.identity)
                lost()
                return
            stopping.wait(RETRY_PERIOD)


class PodLabel:
    """Labels this replica's pod ``LEADER_LABEL: "true"`` while it leads (``"false"`` otherwise):
    the Service ``gitmesh-leader`` selects it, so webhooks and reconcile requests reach the leader."""

    def __init__(self, client: Client, namespace: str, pod: str) -> None:
        self.client = client
        self.namespace = namespace
        self.pod = pod

    def __call__(self, leading: bool) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod,
                "namespace": self.namespace,
                "labels": {LEADER_LABEL: "true" if leading else "false"},
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}"
        self.client.apply(path, body, "gitmesh-leader", force=True)


class KubeLeases:
    """The Lease ``namespace/name`` in a cluster."""

    def __init__(self, client: Client, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def get(self) -> tuple[LeaseRecord, str] | None:
        try:
            lease = self.client.request("GET", f"{self._path}/{self.name}")
        except errors.NotFound:
            return None
        spec = lease.get("spec") or {}
        epoch = datetime.fromtimestamp(0, UTC)
        record = LeaseRecord(
            holder=spec.get("holderIdentity") or "",
            duration=float(spec.get("leaseDurationSeconds") or LEASE_DURATION),
            acquired=durations.instant(spec.get("acquireTime")) or epoch,
            renewed=durations.instant(spec.get("renewTime")) or epoch,
            transitions=int(spec.get("leaseTransitions") or 0),
        )
        return record, lease["metadata"]["resourceVersion"]

    def create(self, record: LeaseRecord) -> str | None:
        try:
            lease = self.client.request("POST", self._path, body=self._body(record, ""))
        except errors.Conflict:  # 409 AlreadyExists
            return None
        return str(lease["metadata"]["resourceVersion"])

    def replace(self, record: LeaseRecord, version: str) -> str | None:
        try:
            path = f"{self._path}/{self.name}"
            lease = self.client.request("PUT", path, body=self._body(record, version))
        except errors.Conflict:
            return None
        return str(lease["metadata"]["resourceVersion"])

    def _body(self, record: LeaseRecord, version: str) -> dict[str, Any]:
        metadata = {"name": self.name, "namespace": self.namespace}
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**metadata, "resourceVersion": version} if version else metadata,
            "spec": {
                "holderIdentity": record.holder,
                "leaseDurationSeconds": round(record.duration),
                "acquireTime": _format_time(record.acquired),
                "renewTime": _format_time(record.renewed),
                "leaseTransitions": record.transitions,
            },
        }


def _format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
