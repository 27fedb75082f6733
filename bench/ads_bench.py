"""Benchmark: N Envoy-like ADS streams against a mesh of 1,000 services, and one TrafficSplit change.

The target (from the issue): a load client opens N ADS streams (state of the
world or delta) as distinct proxies against a mesh of 1,000 services; measure
the memory per connected proxy, and the time from a TrafficSplit change until
every affected proxy has ACKed, at N = 1,000 and 5,000. Targets: p99 <= 1 s at
1,000 proxies, <= 100 KB per proxy.

Three kinds of process, all on the loopback:

- the **orchestrator** (``python bench/ads_bench.py ...``) starts the others,
  sends them commands over their stdin and reads JSON lines from their stdout;
- the **server** (``_server``): generates the mesh, feeds it to a
  ``MeshPublisher``, serves it with ``gitmesh.xds.server.serve`` on
  127.0.0.1:0 and does nothing else, so its RSS (``/proc/self/status``) is the
  server's alone. On ``change`` it shifts one TrafficSplit's weights with
  ``publisher.update(objects)`` on the event loop, as ``gitmesh run`` does,
  and reports the ``time.monotonic()`` stamp taken just before;
- one or more **load clients** (``_client``): asyncio + grpc.aio, one gRPC
  channel (its own TCP connection) per proxy, like Envoy. Each stream sends a
  distinct node (id and metadata), subscribes CDS and LDS (wildcard), EDS (every
  cluster of the mesh) and RDS (``outbound``, ``inbound``), and ACKs every
  response as Envoy does: SotW with version_info + response_nonce and the same
  resource names, delta with the response_nonce. Responses are decoded only
  as far as their version, type and nonce. After ``arm``, each stream records
  when it ACKed the first route configuration that differs from the one it had.

``CLOCK_MONOTONIC`` is system-wide on Linux, so stamps from different
processes compare directly.

Which proxies: proxy ``i`` belongs to workload ``i % K`` (``--identities K``,
default N: every proxy distinct). Workload ``w < 1000`` is service ``w``
with its own ServiceAccount and the default sidecar ports; its proxies are
replicas (pods on different hosts: same identity, service and ports, different
node ids). Workload ``w >= 1000`` is a further replica of service ``w % 1000``
with ports of its own, as every gitmesh sidecar on one host needs. gitmesh keys
snapshots by identity, service and ports, so K is the number of distinct
snapshots the server computes and keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

TARGET_P99_SECONDS = 1.0
TARGET_BYTES_PER_PROXY = 100 * 1024
SERVICES_PER_NAMESPACE = 10
HTTP_PORT = 8080
ENDPOINTS_PER_SERVICE = 3
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
APP_PORT = 8080
CHANGED_SPLIT = ("team-000", "reviews")  # namespace, name of the TrafficSplit whose weights shift

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TYPES = (CDS, EDS, LDS, RDS)
TYPE_NAMES = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS", SDS: "SDS"}
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


# --- the mesh ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    namespace: str
    service: str
    service_account: str
    ports: tuple[int, int, int]  # app, outbound, inbound
    address: str  # the inbound address: one of the service's endpoints, as a pod's IP is


def _meta(kind: str, api: str, ns: str | None, name: str, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if ns is not None:
        metadata["namespace"] = ns
    metadata.update(extra)
    return {"apiVersion": api, "kind": kind, "metadata": metadata}


def service_names(services: int) -> list[tuple[str, str]]:
    """(namespace, service) for every service: per namespace of ten, four plain apps and two
    split apps (a root service and its -v1 and -v2 backends)."""
    out = []
    for i in range(services):
        ns = f"team-{i // SERVICES_PER_NAMESPACE:03d}"
        j = i % SERVICES_PER_NAMESPACE
        name = (
            f"app-{j}"
            if j < 4
            else ["reviews", "reviews-v1", "reviews-v2", "ratings", "ratings-v1", "ratings-v2"][j - 4]
        )
        out.append((ns, name))
    return out


def mesh_objects(
    services: int, weights: tuple[int, int] = (90, 10), permissive: bool = False
) -> list[dict[str, Any]]:
    """Namespaces, a ServiceAccount per service, Services with an HTTP port, EndpointSlices,
    TrafficSplits, HTTPRouteGroups and TrafficTargets. ``weights`` of the changed split only;
    ``permissive``: a MeshConfig that turns access checks off (every proxy is sent every service)."""
    names = service_names(services)
    objects: list[dict[str, Any]] = []
    if permissive:
        config = _meta("MeshConfig", "config.openservicemesh.io/v1alpha2", "osm-system", "osm-mesh-config")
        config["spec"] = {"traffic": {"enablePermissiveTrafficPolicyMode": True}}
        objects.append(config)
    namespaces = sorted({ns for ns, _ in names})
    for ns in namespaces:
        objects.append(_meta("Namespace", "v1", None, ns))
    by_ns: dict[str, list[str]] = {}
    for index, (ns, name) in enumerate(names):
        by_ns.setdefault(ns, []).append(name)
        objects.append(_meta("ServiceAccount", "v1", ns, name))
        svc = _meta("Service", "v1", ns, name)
        svc["spec"] = {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": APP_PORT, "appProtocol": "http"}],
        }
        objects.append(svc)
        eps = _meta(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            ns,
            f"{name}-abcde",
            labels={"kubernetes.io/service-name": name},
        )
        eps["addressType"] = "IPv4"
        eps["ports"] = [{"name": "http", "port": INBOUND_PORT, "protocol": "TCP"}]
        eps["endpoints"] = [
            {
                "addresses": [f"10.{index // 250}.{index % 250}.{k + 1}"],
                "conditions": {"ready": True},
            }
            for k in range(ENDPOINTS_PER_SERVICE)
        ]
        objects.append(eps)
    for n, ns in enumerate(namespaces):
        members = by_ns[ns]
        for root in ("reviews", "ratings"):
            if root not in members or f"{root}-v2" not in members:
                continue
            split = _meta("TrafficSplit", "split.smi-spec.io/v1alpha4", ns, root)
            w1, w2 = weights if (ns, root) == CHANGED_SPLIT else (50, 50)
            split["spec"] = {
                "service": root,
                "backends": [
                    {"service": f"{root}-v1", "weight": w1},
                    {"service": f"{root}-v2", "weight": w2},
                ],
            }
            objects.append(split)
        next_ns = namespaces[(n + 1) % len(namespaces)]
        for name in members:
            group = _meta("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4", ns, f"{name}-routes")
            group["spec"] = {
                "matches": [
                    {"name": "read", "pathRegex": f"/{name}/[0-9a-f-]+", "methods": ["GET", "HEAD"]},
                    {"name": "write", "pathRegex": f"/{name}/items", "methods": ["POST", "PUT"]},
                    {"name": "health", "pathRegex": "/healthz", "methods": ["GET"]},
                ]
            }
            objects.append(group)
            callers = [m for m in members if m != name][:3]
            target = _meta("TrafficTarget", "access.smi-spec.io/v1alpha3", ns, f"{name}-callers")
            target["spec"] = {
                "destination": {"kind": "ServiceAccount", "name": name, "namespace": ns},
                "rules": [{"kind": "HTTPRouteGroup", "name": f"{name}-routes"}],
                "sources": [
                    *({"kind": "ServiceAccount", "name": c, "namespace": ns} for c in callers),
                    {"kind": "ServiceAccount", "name": by_ns[next_ns][0], "namespace": next_ns},
                ],
            }
            objects.append(target)
    return objects


def workloads(services: int, identities: int) -> list[Workload]:
    names = service_names(services)
    out = []
    for w in range(identities):
        ns, name = names[w % services]
        shift = w // services  # 0: the default ports; replicas on the same host need ports of their own
        ports = (APP_PORT + 2 * shift, OUTBOUND_PORT + 2 * shift, INBOUND_PORT + 2 * shift)
        index = w % services
        address = f"10.{index // 250}.{index % 250}.{shift % ENDPOINTS_PER_SERVICE + 1}"  # see mesh_objects
        out.append(Workload(ns, name, name, ports, address))
    return out


def affected_proxies(services: int, proxies: int, identities: int, permissive: bool) -> int:
    """How many proxies a change of CHANGED_SPLIT reaches: those whose identity may call a service
    of its namespace (a proxy is sent only those), every proxy in a permissive mesh."""
    from gitmesh.apis import read
    from gitmesh.mesh.state import Identity

    mesh = read.mesh(mesh_objects(services, permissive=permissive))
    callers = {p.caller for p in mesh.permissions if p.destination.namespace == CHANGED_SPLIT[0]}
    pool = workloads(services, identities)
    return sum(
        1
        for i in range(proxies)
        if mesh.permissive
        or Identity(pool[i % len(pool)].namespace, pool[i % len(pool)].service_account) in callers
    )


def node_metadata(workload: Workload) -> dict[str, str | int]:
    """What a sidecar's bootstrap says of it (``gitmesh.xds.bootstrap``), as the load client sends it."""
    app, outbound, inbound = workload.ports
    return {
        "namespace": workload.namespace,
        "service_account": workload.service_account,
        "service": workload.service,
        "service_namespace": workload.namespace,
        "app_port": app,
        "outbound_port": outbound,
        "inbound_port": inbound,
        "inbound_address": workload.address,
    }


def node_message(index: int, workload: Workload) -> Any:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(
        id=f"{workload.namespace}/{workload.service}/proxy-{index}",
        cluster=f"{workload.namespace}/{workload.service}",
    )
    node.metadata.update(node_metadata(workload))
    return node


PEER_KEY_FIELDS = (  # bench/peer/main.go's keyFields
    "namespace",
    "service_account",
    "service_namespace",
    "service",
    "app_port",
    "outbound_port",
    "inbound_port",
    "inbound_address",
)


def peer_key(workload: Workload) -> str:
    """The peer's snapshot key of a workload's proxies (bench/peer/main.go's ``nodeKey``): what
    gitmesh's ``proxy_key`` tells apart for the bench's sidecars, so both group proxies alike."""
    metadata = node_metadata(workload)
    return "|".join(str(metadata[name]) for name in PEER_KEY_FIELDS)


def eds_names(services: int) -> list[str]:
    return [f"{ns}/{name}|{HTTP_PORT}" for ns, name in service_names(services)]


# --- small process helpers -----------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emit(**data: Any) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _stdin_commands(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines from stdin, read by a thread (stdin EOF means "quit")."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "quit")

    threading.Thread(target=pump, daemon=True).start()
    return queue


# --- the server process --------------------------------------------------------------------------


async def server_main(args: argparse.Namespace) -> None:
    import logging

    from gitmesh.certs.authority import MeshCA
    from gitmesh.certs.store import FileKeeper, load_or_create
    from gitmesh.serve import MeshPublisher, utcnow
    from gitmesh.xds.server import serve

    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    commands = _stdin_commands(loop)
    started = time.perf_counter()
    if args.tracemalloc:
        tracemalloc.start()
    objects = mesh_objects(args.services, permissive=args.permissive)
    if args.xds == "mtls":  # as gitmesh run serves: TLS, client certificates checked against nodes
        mesh_ca = MeshCA(load_or_create(FileKeeper(Path(args.ca_file)), utcnow()))
        publisher = MeshPublisher(mesh_ca=mesh_ca)
        publisher.update(objects)
        running = await serve(
            publisher.cache,
            "127.0.0.1:0",
            nodes=publisher,
            tls=publisher.server_tls("127.0.0.1"),
            authorize=publisher.authorize,
        )
    else:
        publisher = MeshPublisher()
        publisher.update(objects)
        running = await serve(publisher.cache, "127.0.0.1:0", nodes=publisher)
    # The publisher keeps what it needs of the objects; the server keeps no copy of its own.
    object_count = len(objects)
    del objects
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    gc.collect()
    emit(
        port=running.port,
        objects=object_count,
        services=len(publisher.mesh.services),
        splits=len(publisher.mesh.splits),
        setup_s=time.perf_counter() - started,
        rss=rss_bytes(),
    )
    flip = False
    heap_before: tracemalloc.Snapshot | None = None
    try:
        while True:
            command = await commands.get()
            if command == "quit":
                break
            if command == "rss":
                gc.collect()
                held = rss_bytes()
                if args.tracemalloc:
                    # The first reading is the baseline; later ones show what the proxies added.
                    heap = tracemalloc.take_snapshot()
                    if heap_before is None:
                        heap_before = heap
                    else:
                        grown = heap.compare_to(heap_before, "lineno")
                        total = sum(stat.size_diff for stat in grown)
                        print(f"tracemalloc: Python heap grew {total / 2**20:,.1f} MiB", file=sys.stderr)
                        for stat in grown[:25]:
                            print(f"tracemalloc: {stat}", file=sys.stderr, flush=True)
                emit(
                    rss=held,
                    cpu=cpu_seconds(),
                    keys=len(publisher._proxies),
                    streams=len(running.servicer.streams()),
                    interned=len(publisher.encodings._interned),
                )
            elif command == "trim":
                # What is in use, told apart from what the C allocator holds free but has not given
                # back (gitmesh never trims: this is for the reader, after everything was measured).
                gc.collect()
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                emit(rss=rss_bytes())
            elif command == "cpu":
                emit(cpu=cpu_seconds())
            elif command == "report":  # what gitmesh run would write to its store for gitmesh status
                from gitmesh.serve import xds_report

                report = xds_report(
                    running.servicer.streams(), publisher.cache, publisher.sidecars(), publisher.ca.expiries()
                )
                emit(nacks=len(report["nacks"]), bytes=len(json.dumps(report)))
            elif command == "change":
                flip = not flip
                weights = (80, 20) if flip else (90, 10)
                changed = mesh_objects(args.services, weights, args.permissive)
                if profiler is not None:
                    profiler.enable()
                cpu0 = time.process_time()
                t0 = time.monotonic()
                first_key = 0.0  # the mesh read and compared, and the first key published
                for _ in publisher.updating(changed):  # as gitmesh run: streams answered between keys
                    first_key = first_key or time.monotonic()
                    await asyncio.sleep(0)
                t1 = time.monotonic()
                cpu1 = time.process_time()
                del changed
                emit(t0=t0, t1=t1, first_key=first_key or t1, update_cpu=cpu1 - cpu0)
            elif command.startswith("streams "):  # which of these proxies has a stream here, holding what
                wanted = {f"proxy-{i}" for i in command.split()[1].split(",")}
                emit(
                    streams=[
                        [info.node_id, {TYPE_NAMES.get(u, u): v for u, v in info.acked().items()}]
                        for info in running.servicer.streams()
                        if info.node_id.rpartition("/")[2] in wanted
                    ]
                )
            elif command == "profile-stop":
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                emit(ok=True)
    finally:
        await running.stop(0)


def dump_main(args: argparse.Namespace) -> None:
    """What gitmesh publishes for every distinct proxy of the bench, before and after the split
    change, as serialized Any per peer key and type, and the xDS server's TLS material: what the
    go-control-plane peer serves."""
    import base64

    from gitmesh.certs.authority import MeshCA
    from gitmesh.certs.store import FileKeeper, load_or_create
    from gitmesh.serve import MeshPublisher, utcnow

    mtls = args.xds == "mtls"
    mesh_ca = MeshCA(load_or_create(FileKeeper(Path(args.ca_file)), utcnow())) if mtls else None
    publisher = MeshPublisher(mesh_ca=mesh_ca)
    pool = workloads(args.services, args.identities)
    variants = []
    for weights in ((90, 10), (80, 20)):
        publisher.update(mesh_objects(args.services, weights, args.permissive))
        by_key: dict[str, dict[str, list[str]]] = {}
        for index, workload in enumerate(pool):
            key = publisher.opened(node_message(index, workload))
            snapshot = publisher.cache.snapshot(key)
            assert snapshot is not None
            by_key[peer_key(workload)] = {
                url: [
                    base64.b64encode(b"".join(item.parts)).decode() for item in snapshot.encoded(url).values()
                ]
                for url in snapshot.resources
                if mtls or url != SDS
            }
        variants.append(by_key)
    material = publisher.server_tls("127.0.0.1").current() if mtls else None
    tls = dict(zip(("key", "cert", "roots"), material, strict=True)) if material else None
    Path(args.dump).write_text(json.dumps({"variants": variants, "tls": tls}))


# --- the load client -----------------------------------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    tag, size = number << 3 | 2, len(payload)
    out = bytearray()
    for value in (tag, size):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


FIRST_RESPONSE_TIMEOUT = 60.0


class NoFirstResponse(Exception):
    """A new stream got no response at all in FIRST_RESPONSE_TIMEOUT seconds."""


@dataclass
class StreamStats:
    connected: float = 0.0
    configured: float = 0.0  # every type ACKed once
    route_version: str = ""  # the last route configuration ACKed
    baseline: str | None = None  # after "arm": the one a change must differ from
    changed_ack: float = 0.0
    responses: int = 0
    bytes: int = 0
    acked: set[str] = field(default_factory=set)


class LoadClient:
    """Many proxies in one process; each is one channel, one ADS stream."""

    def __init__(self, args: argparse.Namespace) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        self.args = args
        self.delta = args.mode == "delta"
        self.pb = discovery_pb2
        self.addresses = [f"127.0.0.1:{port}" for port in args.ports.split(",")]
        self.stats: dict[int, StreamStats] = {}
        self.errors: list[str] = []
        self.retries = 0  # streams reopened after failing before their first config
        self.retry_reasons: dict[str, int] = {}  # why, by gRPC status code
        names = eds_names(args.services)
        wanted = {
            CDS: [],
            EDS: names,
            LDS: [],
            RDS: ["inbound", "outbound"],
            SDS: ["workload-cert", "trust-bundle"],
        }
        # With mTLS, each proxy also subscribes to its secrets, as Envoy does for its TLS contexts.
        self.types = (*TYPES, SDS) if args.xds == "mtls" else TYPES
        self.credentials = self._credentials(args) if args.xds == "mtls" else None
        # Constant parts of every request of a type, serialized once; a message's fields may come in any
        # order and concatenated serializations merge, so a request is a constant part plus a few fields.
        if self.delta:
            self.subscribe = {
                url: discovery_pb2.DeltaDiscoveryRequest(
                    type_url=url, resource_names_subscribe=wanted[url]
                ).SerializeToString()
                for url in self.types
            }
            self.fixed = {
                url: discovery_pb2.DeltaDiscoveryRequest(type_url=url).SerializeToString()
                for url in self.types
            }
        else:
            self.fixed = {
                url: discovery_pb2.DiscoveryRequest(
                    type_url=url, resource_names=wanted[url]
                ).SerializeToString()
                for url in self.types
            }
            self.subscribe = self.fixed

    @staticmethod
    def _credentials(args: argparse.Namespace) -> Any:
        """A client certificate per workload identity, from the CA the server keeps in ``--ca-file``."""
        import datetime

        import grpc

        from gitmesh.certs import ca, store
        from gitmesh.mesh.state import Identity

        state = store.FileKeeper(Path(args.ca_file)).load()
        assert state is not None, f"no CA in {args.ca_file}"
        now = datetime.datetime.now(datetime.UTC)
        roots = "".join(state.bundle()).encode()
        out = {}
        for w in workloads(args.services, args.identities):
            key = (w.namespace, w.service_account)
            if key not in out:
                issued = ca.issue(state.signing, state.trust_domain, Identity(*key), now)
                out[key] = grpc.ssl_channel_credentials(
                    roots, issued.key_pem.encode(), issued.cert_pem.encode()
                )
        return out

    def node(self, index: int, workload: Workload) -> bytes:
        field_number = 1 if self.delta else 2
        return _field(field_number, node_message(index, workload).SerializeToString())

    def ack(self, url: str, version: str, nonce: str) -> bytes:
        if self.delta:
            return self.fixed[url] + _field(6, nonce.encode())
        return self.fixed[url] + _field(1, version.encode()) + _field(5, nonce.encode())

    async def run_proxy(self, index: int, workload: Workload, stop: asyncio.Event) -> None:
        """One proxy: its stream, reopened after a failure as Envoy does (after a jittered back-off)."""
        import random

        import grpc

        stats = self.stats[index] = StreamStats()
        stats.connected = time.monotonic()
        node = self.node(index, workload)
        credentials = (
            self.credentials[(workload.namespace, workload.service_account)] if self.credentials else None
        )
        while not stop.is_set():
            try:
                # Replicas behind one Service: each proxy lands on one of them.
                address = self.addresses[index % len(self.addresses)]
                await self.stream(address, node, stats, stop, credentials)
                if not stats.configured and not stop.is_set():
                    self.errors.append(f"proxy {index}: the server ended the stream before its config")
                return
            except (grpc.aio.AioRpcError, NoFirstResponse) as e:
                if stop.is_set():
                    return
                if stats.configured:  # a stream that had its config is not expected to fail
                    self.errors.append(f"proxy {index}: {e}"[:300])
                    return
                self.retries += 1
                reason = (
                    f"{e.code().name}: {e.details()}"[:120]
                    if isinstance(e, grpc.aio.AioRpcError)
                    else f"no response in {FIRST_RESPONSE_TIMEOUT:.0f} s"
                )
                self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1
                stats.acked.clear()
                await asyncio.sleep(random.uniform(0.25, 1.0))

    async def stream(
        self, address: str, node: bytes, stats: StreamStats, stop: asyncio.Event, credentials: Any
    ) -> None:
        import grpc

        options = [
            ("grpc.use_local_subchannel_pool", 1),  # its own connection, as every Envoy has
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.enable_retries", 0),
        ]
        if credentials is None:
            channel = grpc.aio.insecure_channel(address, options=options)
        else:
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        method = "DeltaAggregatedResources" if self.delta else "StreamAggregatedResources"
        call = channel.stream_stream(
            ADS + method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )()
        parse = (
            self.pb.DeltaDiscoveryResponse.FromString if self.delta else self.pb.DiscoveryResponse.FromString
        )
        try:
            first = True
            for url in self.types:
                await call.write(self.subscribe[url] + (node if first else b""))
                first = False
            answered = False
            while not stop.is_set():
                if answered:
                    raw = await call.read()
                else:  # under a connection storm a call can be lost without an error: open another
                    try:
                        raw = await asyncio.wait_for(call.read(), FIRST_RESPONSE_TIMEOUT)
                    except TimeoutError:
                        raise NoFirstResponse from None
                    answered = True
                if raw is grpc.aio.EOF:
                    break
                response = parse(raw)
                stats.responses += 1
                stats.bytes += len(raw)
                url = response.type_url
                version = response.system_version_info if self.delta else response.version_info
                if url == RDS and self.delta:
                    version = ",".join(r.version for r in response.resources)
                await call.write(self.ack(url, version, response.nonce))
                now = time.monotonic()
                if url == RDS:
                    stats.route_version = version
                    if stats.baseline is not None and version != stats.baseline and not stats.changed_ack:
                        stats.changed_ack = now
                if url not in stats.acked:
                    stats.acked.add(url)
                    if len(stats.acked) == len(self.types) and not stats.configured:
                        stats.configured = now
        finally:
            call.cancel()
            await channel.close()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        commands = _stdin_commands(loop)
        stop = asyncio.Event()
        mine = [(i, w) for i, w in self.assigned()]
        tasks: list[asyncio.Task[None]] = []
        emit(ready=True, proxies=len(mine))
        try:
            while True:
                command = await commands.get()
                if command == "quit":
                    break
                if command == "connect":
                    t0 = time.monotonic()
                    for n, (i, w) in enumerate(mine):
                        tasks.append(asyncio.create_task(self.run_proxy(i, w, stop)))
                        if n % 50 == 49:
                            await asyncio.sleep(0)  # let earlier streams start while we open more
                    emit(started=t0)
                elif command == "status":
                    configured = sum(1 for s in self.stats.values() if s.configured)
                    changed = sum(1 for s in self.stats.values() if s.changed_ack)
                    emit(
                        configured=configured,
                        changed=changed,
                        errors=self.errors[:5],
                        retries=self.retries,
                        retry_reasons=self.retry_reasons,
                        cpu=cpu_seconds(),
                        # The first few still waiting: which types each has, and how many responses.
                        waiting=[
                            (i, sorted(TYPE_NAMES[url] for url in s.acked), s.responses)
                            for i, s in self.stats.items()
                            if not s.configured
                        ][:5],
                    )
                elif command == "arm":  # from now on, a route configuration other than the last is the change
                    for s in self.stats.values():
                        s.baseline = s.route_version
                        s.changed_ack = 0.0
                    emit(armed=True)
                elif command == "times":
                    emit(
                        connected=[s.connected for s in self.stats.values()],
                        configured=[s.configured for s in self.stats.values()],
                        changed=[s.changed_ack for s in self.stats.values()],
                        responses=sum(s.responses for s in self.stats.values()),
                        bytes=sum(s.bytes for s in self.stats.values()),
                    )
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def assigned(self) -> Iterator[tuple[int, Workload]]:
        pool = workloads(self.args.services, self.args.identities)
        for i in range(self.args.client_index, self.args.proxies, self.args.clients):
            yield i, pool[i % len(pool)]


def client_main(args: argparse.Namespace) -> None:
    asyncio.run(LoadClient(args).main())


# --- the orchestrator ----------------------------------------------------------------------------


class Child:
    """A child process spoken to in JSON lines: commands on stdin, replies on stdout."""

    def __init__(self, name: str, argv: list[str], program: list[str] | None = None) -> None:
        """Runs this script with ``argv``, or ``program`` with it."""
        import queue
        import tempfile

        self.name = name
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, str(Path(__file__).resolve())]), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        import queue

        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        self.send(command)
        return self.answer(command, timeout)

    def answer(self, command: str, timeout: float) -> dict[str, Any]:
        """The reply to ``command``, sent before."""
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-6000:]
        self.stderr.close()
        if tail.strip():
            print(f"--- {self.name} stderr (tail) ---\n{tail}", file=sys.stderr)


class PeerServer(Child):
    """The go-control-plane peer (``bench/peer``), spoken to as gitmesh's server is; what it does
    not answer itself (RSS, CPU) is read from /proc."""

    def __init__(self, binary: str, dump: str) -> None:
        super().__init__("peer", ["-dump", dump], program=[binary])
        self.keys = 0
        self._cpu_at_change = 0.0

    def read(self, timeout: float) -> dict[str, Any]:
        reply = super().read(timeout)
        self.keys = reply.get("keys", self.keys)
        return reply

    def send(self, command: str) -> None:
        if command == "change":
            self._cpu_at_change = cpu_seconds(self.proc.pid)
        super().send(command)

    def answer(self, command: str, timeout: float) -> dict[str, Any]:
        pid = self.proc.pid
        if command == "rss":  # sent as "gc": RSS read after a collection, as gitmesh's after gc.collect()
            super().answer(command, timeout)
            return {"rss": rss_bytes(pid), "cpu": cpu_seconds(pid), "keys": self.keys}
        if command == "cpu":
            return {"cpu": cpu_seconds(pid)}
        if command.startswith("streams "):
            return {"streams": []}
        reply = super().answer(command, timeout)
        if command == "trim":
            return {"rss": rss_bytes(pid)}
        if command == "change":
            reply["update_cpu"] = cpu_seconds(pid) - self._cpu_at_change
        return reply

    def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        if command in ("rss", "trim", "change"):
            self.send("gc" if command == "rss" else command)
        elif command not in ("cpu", "quit") and not command.startswith("streams "):
            raise ValueError(f"the peer does not answer {command!r}")
        return self.answer(command, timeout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.50):7.3f} s  p99 {percentile(values, 0.99):7.3f} s  "
        f"max {max(values):7.3f} s"
    )


def _wait(
    clients: list[Child], servers: list[Child], key: str, want: int, timeout: float, max_rss: int
) -> tuple[float, int]:
    """Poll the clients until ``key`` counts ``want`` streams; returns (seconds waited, servers' peak RSS)."""
    started = time.monotonic()
    peak = 0
    last = -1
    last_print = 0.0
    while True:
        status = [c.ask("status") for c in clients]
        done = sum(s[key] for s in status)
        errors = [e for s in status for e in s["errors"]]
        retries = sum(s["retries"] for s in status)
        rss = sum(rss_bytes(server.proc.pid) for server in servers)
        peak = max(peak, rss)
        if errors:
            raise RuntimeError(f"streams failed: {errors[:3]}")
        now = time.monotonic()
        if done != last and (now - last_print >= 5 or done >= want):
            print(
                f"    {now - started:6.1f} s: {key} {done}/{want}, server RSS {rss / 2**20:,.0f} MiB, "
                f"{retries} streams reopened",
                flush=True,
            )
            last, last_print = done, now
        over = time.monotonic() - started > timeout
        if done >= want or over:
            reasons: dict[str, int] = {}
            for s in status:
                for reason, count in s["retry_reasons"].items():
                    reasons[reason] = reasons.get(reason, 0) + count
            for reason, count in sorted(reasons.items(), key=lambda item: -item[1])[:3]:
                print(f"      reopened {count} times after {reason}", flush=True)
        if done >= want:
            return time.monotonic() - started, peak
        if over:
            waiting = [w for s in status for w in s.get("waiting", ())][:5]
            asked = "streams " + ",".join(str(w[0]) for w in waiting)
            seen = [stream for server in servers for stream in server.ask(asked)["streams"]]
            raise TimeoutError(
                f"only {done} of {want} streams {key} after {timeout:.0f} s; "
                f"waiting (proxy, types held, responses): {waiting}; "
                f"their streams on the server (node, versions acked): {seen}"
            )
        if rss > max_rss:
            raise MemoryError(f"server RSS {rss / 2**20:,.0f} MiB is over --max-server-rss")
        time.sleep(0.25)


def _total(servers: list[Child], command: str, field: str, timeout: float = 120.0) -> float:
    return sum(server.ask(command, timeout=timeout)[field] for server in servers)


def run(args: argparse.Namespace, peer: str = "") -> dict[str, Any]:
    """One run against ``--replicas`` gitmesh servers, or against the go-control-plane ``peer``
    binary (one process) serving what gitmesh computes."""
    identities = args.identities or args.proxies
    replicas = 1 if peer else args.replicas
    print(
        f"ads_bench: {args.services} services, {args.proxies} proxies ({args.mode}, {args.xds}), "
        f"{identities} distinct proxy keys, {args.clients} client process(es), "
        f"{'go-control-plane peer' if peer else f'{replicas} gitmesh server(s)'}; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    import tempfile

    workdir = tempfile.TemporaryDirectory(prefix="ads_bench.")
    args.ca_file = str(Path(workdir.name) / "ca.json")
    if args.xds == "mtls":  # made here, once: replicas share the CA, as they share it in the store
        from gitmesh.certs.store import FileKeeper, load_or_create
        from gitmesh.serve import utcnow

        load_or_create(FileKeeper(Path(args.ca_file)), utcnow())
    xds = ["--xds", args.xds, "--ca-file", args.ca_file, *["--permissive"] * args.permissive]
    servers: list[Child] = []
    clients: list[Child] = []
    try:
        if peer:
            dump = str(Path(workdir.name) / "dump.json")
            made = time.monotonic()
            dump_argv = ["_dump", "--services", str(args.services), "--identities", str(identities)]
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *dump_argv, "--dump", dump, *xds], check=True
            )
            print(f"  gitmesh's resources dumped for the peer in {time.monotonic() - made:.1f} s", flush=True)
            servers.append(PeerServer(peer, dump))
        else:
            server_argv = ["_server", "--services", str(args.services), *xds]
            if args.profile:
                server_argv += ["--profile", args.profile]
            if args.tracemalloc:
                server_argv.append("--tracemalloc")
            servers = [Child(f"server {r}", server_argv) for r in range(replicas)]
        ports = []
        for server in servers:
            info = server.read(300)
            ports.append(str(info["port"]))
            if peer:
                print(f"  peer: {info['keys']} snapshot keys loaded, port {info['port']}", flush=True)
            else:
                print(
                    f"  {server.name}: {info['objects']} objects, {info['services']} services, "
                    f"{info['splits']} split routes, ready in {info['setup_s']:.2f} s, "
                    f"RSS {info['rss'] / 2**20:,.1f} MiB, port {info['port']}",
                    flush=True,
                )
        base_rss = _total(servers, "rss", "rss")
        cpu0 = _total(servers, "cpu", "cpu")
        for index in range(args.clients):
            argv = ["_client", "--ports", ",".join(ports), "--services", str(args.services)]
            argv += ["--proxies", str(args.proxies), "--identities", str(identities), "--mode", args.mode]
            argv += ["--clients", str(args.clients), "--client-index", str(index), *xds]
            clients.append(Child(f"client {index}", argv))
        for client in clients:
            client.read(120)
        started = [c.ask("connect")["started"] for c in clients]
        connect_s, peak = _wait(
            clients, servers, "configured", args.proxies, args.timeout, args.max_server_rss
        )
        time.sleep(args.settle)  # memory at rest: gitmesh gives back what a burst freed once it is over
        loaded = [server.ask("rss", timeout=120) for server in servers]
        loaded_rss = sum(reading["rss"] for reading in loaded)
        cpu1 = sum(reading["cpu"] for reading in loaded)
        times = [c.ask("times", timeout=120) for c in clients]
        t_start = min(started)
        to_config = [t - t_start for ts in times for t in ts["configured"]]
        per_proxy = (loaded_rss - base_rss) / args.proxies
        keys = sum(reading["keys"] for reading in loaded)
        result: dict[str, Any] = {
            "server": "go-control-plane" if peer else "gitmesh",
            "replicas": replicas,
            "services": args.services,
            "proxies": args.proxies,
            "mode": args.mode,
            "xds": args.xds,
            "keys": keys,
            "load_average": os.getloadavg()[0],
            "connect_all_s": max(to_config),
            "connect_p50_s": percentile(to_config, 0.5),
            "server_cpu_connect_s": cpu1 - cpu0,
            "rss_before": base_rss,
            "rss_after": loaded_rss,
            "rss_peak": peak,
            "bytes_per_proxy": per_proxy,
            "initial_bytes_per_proxy_sent": sum(t["bytes"] for t in times) / args.proxies,
            "changes": [],
        }
        print(
            f"  connected and configured {args.proxies} proxies ({keys} snapshot keys) "
            f"in {connect_s:.2f} s; first config {_summary(to_config)}",
            flush=True,
        )
        print(
            f"  server RSS {base_rss / 2**20:,.1f} -> {loaded_rss / 2**20:,.1f} MiB: "
            f"{per_proxy / 1024:,.1f} KiB per proxy (target {TARGET_BYTES_PER_PROXY // 1024} KiB); "
            f"server CPU while connecting {cpu1 - cpu0:.1f} s; "
            f"{result['initial_bytes_per_proxy_sent'] / 1024:,.0f} KiB of responses per proxy",
            flush=True,
        )
        affected = affected_proxies(args.services, args.proxies, identities, args.permissive)
        result["affected_proxies"] = affected
        for n in range(args.changes):
            for client in clients:
                client.ask("arm")
            cpu_before = _total(servers, "cpu", "cpu")
            for server in servers:  # every replica republishes at once, as each watches the store
                server.send("change")
            stamps = [server.answer("change", timeout=args.timeout) for server in servers]
            t0 = min(stamp["t0"] for stamp in stamps)
            # The peer is handed its snapshots ready made; gitmesh reads the mesh first.
            first_key = min(stamp.get("first_key", stamp["t0"]) for stamp in stamps)
            update_s = max(stamp["t1"] for stamp in stamps) - t0
            print(
                f"    the update returned after {update_s:.2f} s "
                f"(CPU {sum(stamp['update_cpu'] for stamp in stamps):.2f} s), server RSS "
                f"{sum(rss_bytes(server.proc.pid) for server in servers) / 2**20:,.0f} MiB",
                flush=True,
            )
            _wait(clients, servers, "changed", affected, args.timeout, args.max_server_rss)
            cpu_after = _total(servers, "cpu", "cpu")
            times = [c.ask("times", timeout=120) for c in clients]
            latencies_at = [t for ts in times for t in ts["changed"] if t]
            latencies = [t - t0 for t in latencies_at]
            change = {
                "p50_s": percentile(latencies, 0.5),
                "p99_s": percentile(latencies, 0.99),
                "max_s": max(latencies),
                "read_s": first_key - t0,
                "p99_after_read_s": percentile([t - first_key for t in latencies_at], 0.99),
                "update_s": update_s,
                "update_cpu_s": sum(stamp["update_cpu"] for stamp in stamps),
                "server_cpu_s": cpu_after - cpu_before,
            }
            result["changes"].append(change)
            print(
                f"  split change {n + 1}: the {affected} proxies that may call {CHANGED_SPLIT[0]} ACKed the "
                f"new routes: {_summary(latencies)} "
                f"(the update took {change['update_s']:.3f} s, the first key was published after "
                f"{change['read_s']:.3f} s, p99 from then {change['p99_after_read_s']:.3f} s, "
                f"server CPU {change['server_cpu_s']:.2f} s)",
                flush=True,
            )
        if args.changes:
            time.sleep(args.settle)
            after = _total(servers, "rss", "rss")
            trimmed = _total(servers, "trim", "rss")
            result["bytes_per_proxy_after_changes"] = (after - base_rss) / args.proxies
            result["in_use_bytes_per_proxy_after_changes"] = (trimmed - base_rss) / args.proxies
            print(
                f"  after the changes: server RSS {after / 2**20:,.1f} MiB, "
                f"{result['bytes_per_proxy_after_changes'] / 1024:,.1f} KiB per proxy; in use (trimmed) "
                f"{trimmed / 2**20:,.1f} MiB, "
                f"{result['in_use_bytes_per_proxy_after_changes'] / 1024:,.1f} KiB per proxy",
                flush=True,
            )
        if args.profile and not peer:
            for server in servers:
                server.ask("profile-stop", timeout=120)
        return result
    finally:
        for child in (*clients, *servers):
            child.stop()
        workdir.cleanup()


def side_by_side(args: argparse.Namespace) -> int:
    """gitmesh and the go-control-plane peer, alternated (A/B/A/B) so both see the machine's noise
    alike; each figure as gitmesh / peer."""
    built = subprocess.run(
        [str(ROOT / "bench" / "peer" / "build.sh")], check=True, capture_output=True, text=True
    )
    binary = built.stdout.strip()
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        results.append(run(args))
        results.append(run(args, peer=binary))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    figures = {
        "connect + first config, all N (s)": lambda r: r["connect_all_s"],
        "RSS per proxy at rest (KiB)": lambda r: r["bytes_per_proxy"] / 1024,
        "split change p50 (s)": lambda r: r["changes"][0]["p50_s"],
        "split change p99 (s)": lambda r: r["changes"][0]["p99_s"],
        "split change max (s)": lambda r: r["changes"][0]["max_s"],
        "split change p99 after the read (s)": lambda r: r["changes"][0]["p99_after_read_s"],
        "server CPU per change (s)": lambda r: r["changes"][0]["server_cpu_s"],
    }
    print(f"{'':36} {'gitmesh':>24} {'go-control-plane':>24} {'ratio':>14}")
    for label, figure in figures.items():
        if not args.changes and "change" in label:
            continue
        mine = [figure(r) for r in results if r["server"] == "gitmesh"]
        peer = [figure(r) for r in results if r["server"] != "gitmesh"]
        ratios = [m / p for m, p in zip(mine, peer, strict=True) if p]
        print(
            f"{label:36} {', '.join(f'{v:.3f}' for v in mine):>24} {', '.join(f'{v:.3f}' for v in peer):>24} "
            f"{', '.join(f'{v:.2f}' for v in ratios):>14}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "_server", "_client", "_dump"])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--mode", choices=["sotw", "delta"], default="sotw")
    parser.add_argument(
        "--identities", type=int, default=0, help="distinct proxy keys (identity+service+ports); 0: one each"
    )
    parser.add_argument("--clients", type=int, default=1, help="load client processes")
    parser.add_argument("--changes", type=int, default=3, help="TrafficSplit changes to time")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for each phase")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of rest before memory is read (at rest)"
    )
    parser.add_argument(
        "--max-server-rss", type=float, default=12.0, help="GiB; abort when the server grows past it"
    )
    parser.add_argument("--profile", default="", help="cProfile the server's updates into this file")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="print where the server's Python memory is, at each RSS reading",
    )
    parser.add_argument(
        "--xds", choices=["mtls", "plaintext"], default="mtls", help="the ADS connections (gitmesh run: mtls)"
    )
    parser.add_argument(
        "--permissive",
        action="store_true",
        help="a permissive mesh (OSM's MeshConfig): every proxy is sent every service",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="gitmesh server processes; proxy i connects to i %% R"
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="side by side with go-control-plane (bench/peer) on gitmesh's resources, alternated",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="with --peer: gitmesh, peer, gitmesh, peer, ..."
    )
    parser.add_argument("--ca-file", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dump", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--client-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "_server":
        asyncio.run(server_main(args))
        return 0
    if args.role == "_client":
        client_main(args)
        return 0
    if args.role == "_dump":
        dump_main(args)
        return 0
    args.max_server_rss = int(args.max_server_rss * 2**30)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)
    if args.peer:
        return side_by_side(args)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    p99 = result["changes"][0]["p99_s"] if result["changes"] else float("nan")
    met = p99 <= TARGET_P99_SECONDS and result["bytes_per_proxy"] <= TARGET_BYTES_PER_PROXY
    print(f"targets (p99 <= {TARGET_P99_SECONDS} s, <= 100 KiB per proxy): {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
