"""Serving the mesh: cluster objects -> MeshState -> each connected proxy's snapshot -> ADS.

``MeshPublisher`` keeps, for every connected proxy, the snapshot
``translate(mesh, proxy)``. Proxies with the same identity, service and ports
share one snapshot key, so their resources are computed and serialized once
(through the publisher's own ``Encodings``, renewed at each mesh update); a
key is forgotten when its last stream closes. The publisher is the server's
``Nodes``: a stream opening is what makes a proxy known and published.
``run`` watches the backend and republishes when its objects change.

Each sidecar's snapshot also holds its identity's certificate and the trust
bundle (SDS), from the workload CA: the built-in mesh CA, or a remote provider
(``certs.provider``). ``run`` renews certificates at two thirds of their
lifetime, off the serving path, and walks a root rotation (``gitmesh certs
rotate``) and a switch of provider (``certs.switch``) a step at a time, each
step once every connected sidecar has accepted the previous one. The xDS
connection itself is always on the built-in CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from google.protobuf import message

from gitmesh.apis import core, read
from gitmesh.certs import ca, store
from gitmesh.certs.authority import STEADY, TRUSTING, CaState, MeshCA, advance
from gitmesh.certs.certmanager import Requests
from gitmesh.certs.choice import Choice, Decision, combine, issuer
from gitmesh.certs.provider import Remote, WorkloadCA
from gitmesh.certs.switch import Switch
from gitmesh.cluster.port import Live
from gitmesh.errors import GitmeshError
from gitmesh.inject import identity
from gitmesh.mesh import state
from gitmesh.mesh.state import Identity
from gitmesh.state import reports
from gitmesh.xds import patch, resources, tls
from gitmesh.xds.bootstrap import SERVER_IDENTITY, admin_address, proxy_of
from gitmesh.xds.cache import SnapshotCache
from gitmesh.xds.server import ServerTls, StreamInfo, serve
from gitmesh.xds.snapshot import Encodings, Snapshot
from gitmesh.xds.translate import Pod, Proxy, Translator

log = logging.getLogger("gitmesh.serve")

DEFAULT_XDS_ADDRESS = "127.0.0.1:15010"
POLL_SECONDS = 0.2  # how often the backend is asked whether anything changed
DEBOUNCE_SECONDS = 0.1
MAX_DEBOUNCE_SECONDS = 1.0
CA_POLL_EVERY = 5  # polls: the kept CA state is read once a second, for a rotation begun elsewhere
REPORT_EVERY_SECONDS = 1.0  # the report of the proxies is written to the backend at most this often


# The maps translation builds for each proxy (clusters, endpoints and secrets are shared).
_PER_PROXY_TYPES = (resources.LISTENER, resources.ROUTE)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


Clock = Callable[[], datetime.datetime]
# A pod by namespace and name, as the cluster has it (None: there is none).
Pods = Callable[[str, str], Mapping[str, Any] | None]


class MeshBackend(Protocol):
    """Where the server reads the mesh's objects and reports its proxies: the embedded store or a
    cluster (``ClusterBackend`` provides it)."""

    def version(self) -> str:
        """Changes whenever any object changes."""

    def list_managed(self) -> Mapping[Any, Live]: ...

    def record_xds(self, report: Mapping[str, Any]) -> None:
        """Keep what the server sees of its proxies, for ``gitmesh status``."""


async def _settled(backend: MeshBackend, version: str) -> str:
    """Wait out a burst of changes (an apply writes many objects): until the version holds still
    for DEBOUNCE_SECONDS, or at most MAX_DEBOUNCE_SECONDS."""
    deadline = time.monotonic() + MAX_DEBOUNCE_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(DEBOUNCE_SECONDS)
        latest = backend.version()
        if latest == version:
            break
        version = latest
    return version


def xds_report(
    streams: Iterable[StreamInfo],
    cache: SnapshotCache,
    sidecars: Mapping[str, str],
    expiries: Mapping[str, datetime.datetime],
    patched: Mapping[str, Mapping[str, tuple[str, ...]]],
    workload: WorkloadCA | None = None,
    refused: str | None = None,
) -> dict[str, Any]:
    """Connected proxies (and their admin interfaces -> their services, where metrics are read), the
    latest rejections they reported (with the EnvoyPatches that changed resources of the type
    rejected), when each identity's certificate expires and, with ``workload``, which provider
    issues them, why it last failed and why the mesh's certificate settings were refused, as plain
    data."""
    streams = list(streams)
    every = [(key, n) for key in sorted({s.key for s in streams}) for n in cache.nacks(key)]
    latest = sorted(every, key=lambda kept: kept[1].at)[-reports.MAX_NACKS :]
    nacks = [
        {
            "proxy": key,
            "type": n.type_url.rpartition(".")[2],
            "version": n.version,
            "message": n.message,
            "at": n.at,
            "patches": list(patched.get(key, {}).get(n.type_url, ())),
        }
        for key, n in latest
    ]
    return {
        "proxies": sorted(s.node_id for s in streams),
        "sidecars": dict(sorted(sidecars.items())),
        "nacks": nacks,
        "certificates": {identity: at.isoformat() for identity, at in expiries.items()},
        **(
            {
                "certificate_provider": {
                    "name": workload.provider,
                    "problem": workload.problem(),
                    **({"refused": refused} if refused else {}),
                }
            }
            if workload is not None
            else {}
        ),
    }


def proxy_key(proxy: Proxy) -> str:
    """Proxies equal in everything translation reads share one snapshot; a pod's sidecar has its own."""
    if proxy.pod is not None:
        pod = proxy.pod
        return f"pod|{pod}|{pod.uid}|{proxy.identity}|{pod.ip}|{proxy.outbound_port},{proxy.inbound_port}"
    ports = f"{proxy.app_port},{proxy.outbound_port},{proxy.inbound_address}:{proxy.inbound_port}"
    upstreams = "".join(f"|{u}" for u in proxy.upstreams)
    return f"{proxy.identity}|{proxy.service}|{ports}{upstreams}" + ("|grpc" if proxy.grpc else "")


Addresses = Mapping[state.ServiceRef, frozenset[str]]  # a service's endpoint addresses, ready or not


def endpoint_addresses(objects: Iterable[Mapping[str, Any]]) -> dict[state.ServiceRef, frozenset[str]]:
    """Every address of each service's EndpointSlices, ready or not (the mesh keeps the ready ones
    only, and a new replica's sidecar is configured before its pod is ready)."""
    found: dict[state.ServiceRef, set[str]] = defaultdict(set)
    for o in objects:
        metadata = o.get("metadata") or {}
        owner = (metadata.get("labels") or {}).get(core.SERVICE_NAME_LABEL)
        if o.get("kind") == "EndpointSlice" and owner:
            service = state.ServiceRef(str(metadata.get("namespace") or ""), owner)
            for endpoint in o.get("endpoints") or ():
                found[service].update(endpoint.get("addresses") or ())
    return {service: frozenset(addresses) for service, addresses in found.items()}


def unbacked_claim(addresses: Addresses, proxy: Proxy) -> str | None:
    """Why the mesh says ``proxy``'s identity cannot front the service it claims, if it can tell.

    A Service selects pods of its own namespace only, and a pod runs as a ServiceAccount of its own
    namespace; a service with endpoints is fronted only at their addresses (its pods'). Which
    ServiceAccount runs behind an address is not known (that takes the pods), nor who fronts a
    service without endpoints; ports are not compared, so that replicas on one host may differ."""
    service = proxy.service
    if service.namespace != proxy.identity.namespace:
        return (
            f"node claims service {service} as {proxy.identity}: "
            "only an identity of the service's own namespace can back it"
        )
    fronts = addresses.get(service, frozenset())
    if fronts and proxy.inbound_address not in fronts:
        return (
            f"node claims service {service} at {proxy.inbound_address}, "
            "which is not the address of any of its endpoints"
        )
    return None


# MeshState's fields compared namespace by namespace below, and those translation never reads.
_BY_NAMESPACE = frozenset({"services", "identities", "splits", "permissions", "routes"})
_NOT_TRANSLATED = frozenset({"warnings"})


def changed_namespaces(before: state.MeshState, after: state.MeshState) -> frozenset[str] | None:
    """The namespaces whose part of the mesh differs (a service, a split or route to one of its
    services, a permission to one of its identities); None when something mesh-wide differs, which
    may touch every proxy (permissive mode, patches, retries, limits, egress, ingress, faults)."""

    def mesh_wide(m: state.MeshState) -> tuple[object, ...]:
        # Every field but those split by namespace below, so a field added later counts as mesh-wide.
        return tuple(
            getattr(m, f.name) for f in dataclasses.fields(m) if f.name not in _BY_NAMESPACE | _NOT_TRANSLATED
        )

    if mesh_wide(before) != mesh_wide(after):
        return None

    def by_namespace(m: state.MeshState) -> dict[str, list[object]]:
        parts: dict[str, list[object]] = defaultdict(list)
        for ref, svc in m.services.items():
            parts[ref.namespace].append(svc)
        for holder in m.identities:
            parts[holder.namespace].append(holder)
        for (root, _), split in m.splits.items():
            parts[root.namespace].append(split)
        for p in m.permissions:
            parts[p.destination.namespace].append(p)
        for (service, _, _), routes in m.routes.items():
            parts[service.namespace].append(routes)
        return parts

    old, new = by_namespace(before), by_namespace(after)
    return frozenset(ns for ns in old.keys() | new.keys() if old.get(ns) != new.get(ns))


def affected(proxy: Proxy, changed: frozenset[str] | None, before: Translator, after: Translator) -> bool:
    """Whether ``proxy``'s resources may differ between the two translations, given the namespaces
    that ``changed``: what it may call (its scope, and the services in it), what it serves (its own
    namespace's services and permissions), its upstreams and its pod's namespace."""
    if changed is None:
        return True
    scope = after.scope(proxy.identity)
    if scope is None or scope != before.scope(proxy.identity) or scope & changed:
        return True
    own = {proxy.identity.namespace, proxy.service.namespace, *(u.service.namespace for u in proxy.upstreams)}
    if proxy.pod is not None:
        own.add(proxy.pod.namespace)
    return bool(own & changed)


def ephemeral_ca(now: datetime.datetime) -> MeshCA:
    """A CA kept nowhere: for publishers run in-process (tests, benchmarks), whose certificates
    need not outlive them."""
    return MeshCA(CaState(ca.DEFAULT_TRUST_DOMAIN, (ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now),)))


class MeshPublisher:
    def __init__(
        self,
        *,
        mesh_ca: MeshCA | None = None,
        workload: WorkloadCA | None = None,
        clock: Clock = utcnow,
        pods: Pods | None = None,
    ) -> None:
        """``workload`` issues the sidecars' certificates (default: the xDS connection's CA);
        ``pods`` looks up the pods injected sidecars say they run in (None: no cluster, and no pod's
        sidecar is served)."""
        self.clock = clock
        self._pods = pods
        self.ca = mesh_ca or ephemeral_ca(clock())  # the xDS connection's CA
        self.workload: WorkloadCA = workload or self.ca  # the sidecars' certificates (SDS)
        self.bundle_sent = self.workload.bundle()  # what the last republishing to all sent
        self.cache = SnapshotCache()
        self.encodings = Encodings()
        self._lock = threading.Lock()
        self._proxies: dict[str, Proxy] = {}
        self._patched: dict[str, Mapping[str, tuple[str, ...]]] = {}  # key -> type URL -> EnvoyPatches
        # The patches' changes, shared by the proxies of a translation while it is in use.
        self._memos: weakref.WeakKeyDictionary[Translator, patch.Memo] = weakref.WeakKeyDictionary()
        self._left_out: weakref.WeakKeyDictionary[Translator, set[tuple[state.EnvoyPatch, int]]] = (
            weakref.WeakKeyDictionary()
        )
        # node id -> the admin interface its latest stream's bootstrap gives, its service, its open streams
        self._sidecars: dict[str, tuple[str, str, int]] = {}
        self._secrets_of: dict[Identity, tuple[ca.Issued, tuple[str, ...], dict[str, message.Message]]] = {}
        self._mesh = read.mesh([])
        self._addresses: Addresses = {}
        self._translator = Translator(self._mesh, self.workload.trust_domain)
        self._generation = 0

    @property
    def mesh(self) -> state.MeshState:
        return self._mesh

    def update(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """A new mesh: every proxy it touches gets its new snapshot (see ``updating``)."""
        for _ in self.updating(objects):
            pass

    def updating(self, objects: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        """A new mesh, published key by key: each key whose resources the change may touch is
        translated and published, then yielded, so that a caller on the server's event loop lets
        the streams of that key be answered before the next is translated (``run`` does). Keys the
        change cannot touch keep their snapshots (``affected``)."""
        objects = list(objects)
        mesh = read.mesh(objects)
        for warning in mesh.warnings:
            log.warning("%s", warning)
        translator = Translator(mesh, self.workload.trust_domain)
        addresses = endpoint_addresses(objects)
        with self._lock:
            before = self._translator
            self.encodings.next_generation()
            self._mesh, self._translator, self._addresses = mesh, translator, addresses
            self._generation += 1
            proxies = dict(self._proxies)
        changed = changed_namespaces(before.mesh, mesh)
        for key, proxy in proxies.items():
            if affected(proxy, changed, before, translator):
                self._publish(key, proxy, translator)
                yield key

    def opened(self, node: base_pb2.Node) -> str:
        """A stream of ``node`` opened: its key, published first if it is new."""
        proxy = proxy_of(node)
        key = proxy_key(proxy)
        with self._lock:
            new = key not in self._proxies
            self._proxies[key] = proxy
            streams = self._sidecars.get(node.id, ("", "", 0))[2]
            self._sidecars[node.id] = (admin_address(node), str(proxy.service), streams + 1)
            translator = self._translator
        if new:
            self._publish(key, proxy, translator)
        return key

    def closed(self, node_id: str, key: str) -> None:
        """A stream closed. The last of ``key`` takes its proxy and snapshot along, so that proxies
        that come and go (a new app port each time) leave nothing behind, and a mesh change
        republishes only the keys of connected proxies. One that comes back is translated again."""
        with self._lock:
            admin, service, streams = self._sidecars.pop(node_id)
            if streams > 1:
                self._sidecars[node_id] = (admin, service, streams - 1)
            if self.cache.watch_count(key):  # another stream of the key is open
                return
            self._proxies.pop(key, None)
            self._patched.pop(key, None)
            snapshot = self.cache.snapshot(key)
            self.cache.clear_snapshot(key)
        if snapshot is not None:
            self.encodings.forget(snapshot, _PER_PROXY_TYPES)

    def patched(self) -> dict[str, Mapping[str, tuple[str, ...]]]:
        """Per proxy key and type URL, the EnvoyPatches that changed what it was last sent (what a
        rejection of that type may be down to)."""
        with self._lock:
            return {key: by_type for key, by_type in self._patched.items() if by_type}

    def sidecars(self) -> dict[str, str]:
        """The connected sidecars' admin interfaces (where their stats are read) -> the service each
        serves (namespace/name), the source of what it sends."""
        with self._lock:
            return {admin: service for admin, service, _ in sorted(self._sidecars.values()) if admin}

    def set_ca_state(self, ca_state: CaState) -> None:
        """A rotation step: the bundle or the signer changed; every sidecar gets what follows from it."""
        self.ca.set_state(ca_state)
        self.refresh_certificates(force=True)

    def refresh_certificates(self, due: Iterable[Identity] = (), *, force: bool = False) -> list[Identity]:
        """Republish to the proxies of ``due`` (what ``workload.refresh`` returned: identities with a
        new certificate, or one due that sending issues), or to all proxies when ``force``; the
        identities of ``due`` that have a proxy."""
        due = set(due)
        if force:
            self.bundle_sent = self.workload.bundle()
        with self._lock:
            proxies = dict(self._proxies)
            translator = self._translator
        renewed = set()
        for key, proxy in proxies.items():
            if force or proxy.identity in due:
                self._publish(key, proxy, translator)
                renewed |= {proxy.identity} & due
        return sorted(renewed, key=str)

    def switch_to(self, new: WorkloadCA) -> None:
        """Begin a switch of provider (``certs.switch``): every sidecar is sent both roots."""
        self.workload = Switch(self.workload, new)
        self.refresh_certificates(force=True)

    def identities(self) -> set[Identity]:
        """The identities of the connected proxies."""
        with self._lock:
            return {p.identity for p in self._proxies.values()}

    def authorize(self, node: base_pb2.Node, peer_pem: bytes | None) -> str | None:
        """Why a stream is refused: its node is not a gitmesh proxy, or its certificate is not
        for the identity the node claims."""
        if peer_pem is None:
            return "no client certificate"
        try:
            proxy = proxy_of(node)
        except ValueError as e:
            return str(e)
        holder = ca.identity_of(peer_pem, self.ca.trust_domain)
        if holder != proxy.identity:
            held = holder or "no mesh identity"
            return f"node claims identity {proxy.identity}, its certificate is for {held}"
        if proxy.pod is not None:
            return self._pod_problem(proxy, proxy.pod)
        return unbacked_claim(self._addresses, proxy)

    def _pod_problem(self, proxy: Proxy, pod: Pod) -> str | None:
        """Whether the pod the node names is there, as it says: its UID, its ServiceAccount (the
        certificate's identity), its address."""
        if self._pods is None:
            return f"node claims pod {pod}: pods are served only from a cluster"
        try:
            found = self._pods(pod.namespace, pod.name)
        except GitmeshError as e:
            return f"node claims pod {pod}, which cannot be looked up now: {e}"
        problem = identity.pod_problem(found, identity.PodClaim(proxy.identity, pod.name, pod.uid), pod.ip)
        return f"node claims {problem}" if problem else None

    def server_tls(self, server_name: str) -> ServerTls:
        """The xDS server's own certificate (identity ``SERVER_IDENTITY``), renewed like the rest."""

        def current() -> tuple[str, str, str]:
            issued = self.ca.certificate(SERVER_IDENTITY, self.clock(), server_name)
            return issued.key_pem, issued.cert_pem, "".join(self.ca.bundle())

        return ServerTls(current)

    def _secrets(self, issued: ca.Issued) -> dict[str, message.Message]:
        """An identity's secrets, built once per certificate and bundle and shared by its proxies."""
        bundle = self.workload.bundle()
        with self._lock:
            held = self._secrets_of.get(issued.identity)
            if held is None or held[0] is not issued or held[1] != bundle:
                held = self._secrets_of[issued.identity] = (
                    issued,
                    bundle,
                    tls.secrets(issued.cert_pem, issued.key_pem, bundle),
                )
            return held[2]

    def _publish(self, key: str, proxy: Proxy, translator: Translator) -> None:
        by_type = translator.resources(proxy)
        patched_by: Mapping[str, tuple[str, ...]] = {}
        if translator.mesh.patches:
            # Validation refused every patch that does not apply. One that does not here (written
            # past gitmesh, or a resource gone since) is left out of this proxy's resources, and said.
            memo = self._memos.setdefault(translator, patch.Memo())
            patched = patch.apply(by_type, translator.mesh.patches, proxy.service, proxy.identity, memo)
            by_type, patched_by = patched.resources, patched.by_type
            said = self._left_out.setdefault(translator, set())
            for problem in patched.problems:
                if (problem.patch, problem.change.index) not in said:  # once per mesh, not per proxy
                    said.add((problem.patch, problem.change.index))
                    log.warning(
                        "%s, patches[%d] left out (first for %s): %s",
                        problem.patch,
                        problem.change.index,
                        key,
                        problem.message,
                    )
        # Without a certificate yet (a remote provider's first is on its way) the sidecar is sent no
        # secrets: it waits for them, and the renewal that brings them republishes.
        if not proxy.grpc and (issued := self.workload.current(proxy.identity, self.clock())):
            by_type = {**by_type, resources.SECRET: self._secrets(issued)}
        snapshot = Snapshot(str(self._generation), by_type, self.encodings)
        with self._lock:
            if key in self._proxies:  # not forgotten while it was translated
                self.cache.set_snapshot(key, snapshot)
                self._patched[key] = patched_by


def all_hold_their_secrets(streams: Iterable[StreamInfo], cache: SnapshotCache) -> bool:
    """Every connected sidecar has accepted the secrets it was last published."""
    return all(
        s.acked().get(resources.SECRET) == cache.version(s.key, resources.SECRET)
        for s in streams
        if resources.SECRET in s.acked()
    )


async def run(
    backend: MeshBackend,
    address: str = DEFAULT_XDS_ADDRESS,
    *,
    keeper: store.Keeper,
    cert_lifetime: datetime.timedelta | None = None,
    certificates: Callable[[], Choice | None] = lambda: None,
    certificate_requests: Requests | None = None,
    stop: asyncio.Event | None = None,
    max_connections: int = 0,
    pods: Pods | None = None,
) -> None:
    """Serve ADS over mTLS on ``address`` until ``stop`` is set, republishing whenever ``backend``
    changes, with the CA ``keeper`` holds (made on first run) for the xDS connection, and the
    sidecars' certificates from the provider the configuration (``certificates``, ``cert_lifetime``:
    None where it says nothing) and the mesh's objects choose (``certs.choice.combine``; asked again
    every second, and a new choice is switched to); ``certificate_requests``: the cluster's, for
    cert-manager; ``pods``: see ``MeshPublisher``."""
    mesh_ca = MeshCA(store.load_or_create(keeper, utcnow()))
    publisher = MeshPublisher(mesh_ca=mesh_ca, pods=pods)
    seen = backend.version()
    publisher.update(live.obj for live in backend.list_managed().values())

    def decide() -> Decision:
        return combine(
            certificates(),
            cert_lifetime,
            publisher.mesh.certificates,
            mesh_ca.trust_domain,
            cluster=certificate_requests is not None,
        )

    serving = _Serving(decide())
    publisher.workload = _workload(serving.decision, mesh_ca, certificate_requests)  # before any sidecar
    host = address.rpartition(":")[0].strip("[]")
    server = await serve(
        publisher.cache,
        address,
        nodes=publisher,
        tls=publisher.server_tls(host),
        authorize=publisher.authorize,
        max_connections=max_connections,
    )
    log.info(
        "serving ADS over mTLS on %s (trust domain %s, workload certificates from %s)",
        address,
        mesh_ca.trust_domain,
        publisher.workload.provider,
    )
    stop = stop or asyncio.Event()
    reported: dict[str, Any] | None = None
    reported_at = 0.0
    polls = 0
    # Renewal runs in a thread (a remote CA may be slow); the loop only collects what it brought.
    renewing: asyncio.Future[list[Identity]] | None = None
    problem: str | None = None
    try:
        while not stop.is_set():
            polls += 1
            try:
                if renewing is None:
                    renewing = asyncio.ensure_future(asyncio.to_thread(publisher.workload.refresh, utcnow()))
                elif renewing.done():
                    if renewed := publisher.refresh_certificates(renewing.result()):
                        log.info("renewed the certificates of %s", ", ".join(map(str, renewed)))
                    renewing = None
                    if publisher.workload.problem() != problem:
                        problem = publisher.workload.problem()
                        if problem:
                            log.error("certificates not renewed, sidecars keep theirs: %s", problem)
                        else:
                            log.info("certificate provider %s issues again", publisher.workload.provider)
                if polls % CA_POLL_EVERY == 0:
                    _follow_rotation(publisher, keeper, server.servicer.streams())
                    serving = _follow_switch(
                        publisher, serving, decide(), server.servicer.streams(), certificate_requests
                    )
                since = time.monotonic() - reported_at
                if since >= REPORT_EVERY_SECONDS:
                    report = xds_report(
                        server.servicer.streams(),
                        publisher.cache,
                        publisher.sidecars(),
                        publisher.workload.expiries(),
                        publisher.patched(),
                        publisher.workload,
                        serving.decision.refused,
                    )
                    if report != reported or since >= reports.REFRESH_SECONDS:
                        backend.record_xds({**report, "at": time.time()})
                        reported, reported_at = report, time.monotonic()
                current = backend.version()
                if current != seen:
                    current = await _settled(backend, current)
                    seen = current
                    for _ in publisher.updating(live.obj for live in backend.list_managed().values()):
                        await asyncio.sleep(0)  # its streams are answered before the next key is translated
                    log.info("mesh updated to store version %s", current)
            except OSError as e:  # out of file descriptors for a moment (a flood of connections)
                log.error("serving on what was last read, retried in %ss: %s", POLL_SECONDS, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    finally:
        if renewing is not None:
            await renewing
        await server.stop(1.0)


def _follow_rotation(publisher: MeshPublisher, keeper: store.Keeper, streams: Iterable[StreamInfo]) -> None:
    """Take up a rotation begun by ``gitmesh certs rotate``; take its next step once every sidecar
    holds what the last one sent."""
    try:
        kept = keeper.load()
    except GitmeshError as e:  # keep serving what was last read; say so every time it is looked at
        log.error("cannot read the mesh CA: %s", e)
        return
    if kept is not None and kept != publisher.ca.state:
        log.info("CA state changed: %s", kept.phase)
        publisher.set_ca_state(kept)
        return
    current = publisher.ca.state
    if current.phase != STEADY and all_hold_their_secrets(streams, publisher.cache):
        following = advance(current)
        keeper.save(following)
        publisher.set_ca_state(following)
        log.info("root rotation: %s", following.phase)


def _workload(decision: Decision, mesh_ca: MeshCA, requests: Requests | None) -> WorkloadCA:
    remote = issuer(decision.choice, requests, decision.key_bits)
    workload: WorkloadCA = Remote(remote, mesh_ca.trust_domain) if remote else mesh_ca
    _tune(workload, decision)
    return workload


def _tune(workload: WorkloadCA, decision: Decision) -> None:
    """The lifetime and key strength of the certificates issued from now on; those held are issued
    again (the built-in CA's when next sent, a remote provider's at its next refresh). A remote
    provider's role decides its keys."""
    if isinstance(workload, MeshCA):
        workload.tune(decision.lifetime, decision.key_bits)
    elif isinstance(workload, Remote):
        workload.tune(decision.lifetime)


@dataclass(frozen=True)
class _Serving:
    """What is served, and during a switch what was served before it (to go back to)."""

    decision: Decision
    switched_from: Decision | None = None


def _follow_switch(
    publisher: MeshPublisher,
    serving: _Serving,
    wanted: Decision,
    streams: Iterable[StreamInfo],
    requests: Requests | None,
) -> _Serving:
    """Begin a switch to the provider chosen now, or take the next step of the one under way once
    every sidecar holds what the last one sent. A new choice while both roots are only trusted
    abandons the switch (no sidecar holds the new provider's certificates yet, and it may never
    issue: a wrong issuer); once it issues to sidecars, the switch is finished first."""
    if wanted.refused != serving.decision.refused and wanted.refused:
        log.error("certificate settings refused: %s", wanted.refused)
    switch = publisher.workload
    if not isinstance(switch, Switch):
        if wanted.choice == serving.decision.choice:
            if (wanted.lifetime, wanted.key_bits) != (serving.decision.lifetime, serving.decision.key_bits):
                log.info("workload certificates from now on: valid %s, %s", wanted.lifetime, _key(wanted))
                _tune(switch, wanted)
                publisher.refresh_certificates(force=True)
            return _Serving(wanted)
        try:
            publisher.switch_to(_workload(wanted, publisher.ca, requests))
        except ValueError as e:
            log.error("not switching the certificate provider to %s: %s", wanted.choice, e)
            return serving
        log.info(
            "switching the certificate provider from %s to %s: trusting both roots",
            serving.decision.choice,
            wanted.choice,
        )
        return _Serving(wanted, serving.decision)
    target = serving.decision.choice
    if switch.phase == TRUSTING and wanted.choice != target and serving.switched_from is not None:
        publisher.workload = switch.old
        publisher.refresh_certificates(force=True)
        log.info("abandoned the switch to %s: %s issues", target, serving.switched_from.choice)
        return _Serving(serving.switched_from)
    if publisher.bundle_sent != switch.bundle():  # the new provider's roots came with its first certificate
        publisher.refresh_certificates(force=True)
    elif switch.ready(publisher.identities()) and all_hold_their_secrets(streams, publisher.cache):
        if switch.phase == TRUSTING:
            switch.advance()
            log.info("switching the certificate provider to %s: issuing from it", target)
        else:
            publisher.workload = switch.new
            log.info("switched the certificate provider to %s: the old root is dropped", target)
            serving = _Serving(serving.decision)
        publisher.refresh_certificates(force=True)
    return serving


def _key(decision: Decision) -> str:
    return "ECDSA P-256" if decision.key_bits is None else f"keys as strong as RSA {decision.key_bits}"
