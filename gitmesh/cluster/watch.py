"""Every object the mesh reads from a cluster, kept current by LIST then WATCH per kind.

The mesh needs everyone's Services, EndpointSlices and ServiceAccounts, not only
gitmesh's (Kubernetes writes the EndpointSlices), so nothing here filters by
owner. ``version()`` changes whenever any watched object does; ``gitmesh run``
polls it and republishes.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from gitmesh.cluster.port import Live
from gitmesh.errors import ClusterError
from gitmesh.kube import errors
from gitmesh.kube.client import Client, Resource
from gitmesh.objects import ObjectRef

log = logging.getLogger("gitmesh.watch")

WATCH_SECONDS = 300  # the server ends each watch after this; the loop starts another
RETRY_SECONDS = 1.0


class MeshWatch:
    """The objects of ``resources`` (kind -> resource) in the cluster of ``client``."""

    def __init__(self, client: Client, resources: Mapping[str, Resource]) -> None:
        self.client = client
        self.resources = resources
        self._objects: dict[ObjectRef, Live] = {}
        self._lock = threading.Lock()
        self._changes = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(kind,), daemon=True) for kind in resources
        ]

    def start(self, timeout: float = 30) -> MeshWatch:
        """Start following every kind; returns once each has been listed once."""
        self._listed = threading.Semaphore(0)
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            if not self._listed.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ClusterError(
                    f"could not list the mesh's objects from {self.client.server} in {timeout:g}s"
                )
        return self

    def stop(self) -> None:
        self._stop.set()

    def version(self) -> str:
        with self._lock:
            return str(self._changes)

    def list(self) -> Mapping[ObjectRef, Live]:
        with self._lock:
            return dict(self._objects)

    def _follow(self, kind: str) -> None:
        res = self.resources[kind]
        api_version = res.api_version
        first = True
        while not self._stop.is_set():
            try:
                try:
                    body = self.client.get(res.path())
                except errors.NotFound:  # an SMI kind whose CRD is not installed (yet)
                    body = {"items": [], "metadata": {}}
                items = [
                    {"apiVersion": api_version, "kind": kind, **item} for item in body.get("items") or ()
                ]
                self._replace(kind, items)
                if first:
                    self._listed.release()
                    first = False
                rv = (body.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self._watch(kind, api_version, res.path(), rv)
                else:
                    self._stop.wait(RETRY_SECONDS)
            except ClusterError as e:
                log.warning("watching %s: %s; retrying", kind, e)
                self._stop.wait(RETRY_SECONDS)

    def _watch(self, kind: str, api_version: str, path: str, rv: str) -> None:
        for event in self.client.watch(path, rv, WATCH_SECONDS):
            if self._stop.is_set():
                break
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                return  # e.g. 410 Gone: the caller lists again
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(event["type"], {"apiVersion": api_version, "kind": kind, **obj})

    def _replace(self, kind: str, items: builtins.list[dict[str, Any]]) -> None:
        with self._lock:
            for ref in [r for r in self._objects if r.kind == kind]:
                del self._objects[ref]
            for obj in items:
                self._objects[ObjectRef.of(obj)] = Live.of(obj)
            self._changes += 1

    def _apply(self, kind_of_event: str, obj: dict[str, Any]) -> None:
        ref = ObjectRef.of(obj)
        with self._lock:
            if kind_of_event == "DELETED":
                self._objects.pop(ref, None)
            else:
                self._objects[ref] = Live.of(obj)
            self._changes += 1
