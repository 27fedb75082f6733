"""Serving the mesh: cluster objects -> MeshState -> each connected proxy's snapshot -> ADS.

``MeshPublisher`` keeps, for every proxy that has connected, the snapshot
``translate(mesh, proxy)``. Proxies with the same identity, service and ports
share one snapshot key, so their resources are computed and serialized once.
``run`` watches the backend and republishes when its objects change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2

from gitmesh.cluster.backend import Live
from gitmesh.mesh import state
from gitmesh.xds.bootstrap import proxy_of
from gitmesh.xds.cache import SnapshotCache
from gitmesh.xds.server import StreamInfo, serve
from gitmesh.xds.snapshot import Snapshot, forget_shared
from gitmesh.xds.translate import Proxy, Translator

log = logging.getLogger("gitmesh.serve")

DEFAULT_XDS_ADDRESS = "127.0.0.1:15010"
POLL_SECONDS = 0.2  # how often the source is asked whether anything changed
DEBOUNCE_SECONDS = 0.1
MAX_DEBOUNCE_SECONDS = 1.0


class Source(Protocol):
    """What the server reads objects from: the embedded store, later a cluster."""

    def version(self) -> str:
        """Changes whenever any object changes."""

    def list_managed(self) -> Mapping[Any, Live]: ...

    def record_xds(self, report: Mapping[str, Any]) -> None:
        """Keep what the server sees of its proxies, for ``gitmesh status``."""


async def _settled(source: Source, version: str) -> str:
    """Wait out a burst of changes (an apply writes many objects): until the version holds still
    for DEBOUNCE_SECONDS, or at most MAX_DEBOUNCE_SECONDS."""
    deadline = time.monotonic() + MAX_DEBOUNCE_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(DEBOUNCE_SECONDS)
        latest = source.version()
        if latest == version:
            break
        version = latest
    return version


def xds_report(streams: Iterable[StreamInfo], cache: SnapshotCache) -> dict[str, Any]:
    """Connected proxies and every rejection they reported, as plain data."""
    streams = list(streams)
    nacks = [
        {
            "proxy": key,
            "type": n.type_url.rpartition(".")[2],
            "version": n.version,
            "message": n.message,
            "at": n.at,
        }
        for key in sorted({s.key for s in streams})
        for n in cache.nacks(key)
    ]
    return {"proxies": sorted(s.node_id for s in streams), "nacks": nacks}


def proxy_key(proxy: Proxy) -> str:
    """Proxies equal in everything translation reads share one snapshot."""
    ports = f"{proxy.app_port},{proxy.outbound_port},{proxy.inbound_address}:{proxy.inbound_port}"
    upstreams = "".join(f"|{u}" for u in proxy.upstreams)
    return f"{proxy.identity}|{proxy.service}|{ports}{upstreams}" + ("|grpc" if proxy.grpc else "")


class MeshPublisher:
    def __init__(self) -> None:
        self.cache = SnapshotCache(node_key=self._key)
        self._lock = threading.Lock()
        self._proxies: dict[str, Proxy] = {}
        self._mesh = state.build([])
        self._translator = Translator(self._mesh)
        self._generation = 0

    @property
    def mesh(self) -> state.MeshState:
        return self._mesh

    def update(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """A new mesh: every known proxy gets its new snapshot (unchanged resources keep their versions)."""
        mesh = state.build(objects)
        for warning in mesh.warnings:
            log.warning("%s", warning)
        translator = Translator(mesh)
        forget_shared()  # the previous generation's messages are not needed to encode this one
        with self._lock:
            self._mesh, self._translator = mesh, translator
            self._generation += 1
            proxies = dict(self._proxies)
        for key, proxy in proxies.items():
            self._publish(key, proxy, translator)

    def _key(self, node: base_pb2.Node) -> str:
        proxy = proxy_of(node)
        key = proxy_key(proxy)
        with self._lock:
            new = key not in self._proxies
            self._proxies[key] = proxy
            translator = self._translator
        if new:
            self._publish(key, proxy, translator)
        return key

    def _publish(self, key: str, proxy: Proxy, translator: Translator) -> None:
        self.cache.set_snapshot(key, Snapshot(str(self._generation), translator.resources(proxy)))


async def run(
    source: Source,
    address: str = DEFAULT_XDS_ADDRESS,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ADS on ``address`` until ``stop`` is set, republishing whenever ``source`` changes."""
    publisher = MeshPublisher()
    seen = source.version()
    publisher.update(live.obj for live in source.list_managed().values())
    server = await serve(publisher.cache, address)
    log.info("serving ADS on %s", address)
    stop = stop or asyncio.Event()
    reported: dict[str, Any] | None = None
    try:
        while not stop.is_set():
            report = xds_report(server.servicer.streams(), publisher.cache)
            if report != reported:
                source.record_xds({**report, "at": time.time()})
                reported = report
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            current = source.version()
            if current != seen:
                current = await _settled(source, current)
                seen = current
                publisher.update(live.obj for live in source.list_managed().values())
                log.info("mesh updated to store version %s", current)
    finally:
        await server.stop(1.0)
