"""The composition root: one cluster's object port with one set of state stores, frozen.

Every command and the controller are handed a ``Settings`` and reach the cluster and gitmesh's
own state only through it; this is where a fleet would compose one object port per cluster with
one place to report. ``open_settings`` is the only code that knows which implementations exist.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitmesh.cluster.inventory import ChangeSet, next_inventory
from gitmesh.cluster.local import SCHEMA as OBJECTS_SCHEMA
from gitmesh.cluster.local import LocalObjects
from gitmesh.cluster.port import Changes, ObjectPort, ObjectsFailed
from gitmesh.embedded import Database
from gitmesh.state import StateStores

if TYPE_CHECKING:
    from gitmesh.kube.client import Client
    from gitmesh.kube.review import Reviewed


@dataclass(frozen=True)
class Settings:
    """One cluster and where gitmesh keeps its state about it."""

    objects: ObjectPort
    state: StateStores
    # Writes inside commit together where the stores share a file (the embedded store).
    transaction: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
    # Asks the cluster whether a bearer token's user may ask for a reconcile of a source.
    review: Callable[[str, str], Reviewed] | None = None
    # The API client of the cluster the objects are in, if they are in one: what only a cluster
    # offers (a Lease to elect a leader with) is built on it, with no need to know the port's class.
    cluster: Client | None = None
    closing: Callable[[], None] = lambda: None  # lets go of connections (this thread's, embedded)

    def close(self) -> None:
        self.closing()

    def write(self, source: str, revision: str | None, ref: str, changes: Changes) -> ChangeSet:
        """Apply ``changes`` as ``source`` and keep its next inventory: the one path every write
        takes. The inventory is written whatever happened, so that it lists exactly what is
        applied; in the embedded store, objects and inventory commit together (a kill leaves both
        before or after)."""
        with self.transaction():
            previous = self.state.inventories.get(source)  # first: it checks the source's name
            done = self.objects.apply(changes)
            error = str(ObjectsFailed("applied", list(done.failures))) if done.failures else ""
            inventory = next_inventory(previous, done)
            self.state.inventories.save(source, inventory, None if error else revision, ref, error)
        return done


def embedded(path: Path | str, *, create: bool = True) -> Settings:
    """Objects and state in one SQLite file (the CA beside it); ``create=False`` for readers, who
    see a missing file as an empty store and leave it missing."""
    from gitmesh.state import embedded as embedded_state  # the CA's file store: cryptography

    db = Database(path, OBJECTS_SCHEMA + embedded_state.SCHEMA, create=create)

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        with db.transaction():
            yield

    return Settings(LocalObjects(db), embedded_state.stores(db), transaction, closing=db.close)


def kubernetes(kubeconfig: str | None = None, context: str | None = None) -> Settings:
    """Objects and state in the cluster of a kubeconfig context (or the pod's own cluster)."""
    from gitmesh.cluster.kube import KubeObjects  # the Kubernetes client takes a while to import
    from gitmesh.kube.client import Client
    from gitmesh.kube.review import may_reconcile
    from gitmesh.state import kube as kube_state

    client = Client.connect(kubeconfig, context)
    return Settings(
        KubeObjects(client),
        kube_state.stores(client),
        review=functools.partial(may_reconcile, client),
        cluster=client,
        closing=client.close,
    )


def open_settings(
    store: Path | str, kubeconfig: str | None, context: str | None, *, create: bool = True
) -> Settings:
    """A cluster when one is named (or gitmesh runs in one), else the embedded store."""
    from gitmesh.kube.client import in_cluster

    if kubeconfig or context or in_cluster():
        return kubernetes(kubeconfig, context)
    return embedded(store, create=create)
