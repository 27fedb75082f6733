"""The ADS gRPC server: state of the world and delta, over one ``SnapshotCache``.

This is the only module that imports grpc. Each stream is driven by a protocol
object (``sotw.SotwStream`` / ``delta.DeltaStream``) that turns requests and
cache wake-ups into encoded responses without doing I/O; the servicer only
moves bytes between the protocol object and the gRPC call.

The server knows nothing of what a node's metadata means: ``Nodes`` turns a
stream's node into the key its snapshots are published under (the node id by
default), and is told when the stream closes.

With ``ServerTls`` the server speaks TLS and requires a client certificate; an
``authorize`` callback then judges each stream's node against its peer's
certificate before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources
from gitmesh.xds.cache import SnapshotCache
from gitmesh.xds.delta import DeltaStream
from gitmesh.xds.memory import AfterBursts
from gitmesh.xds.snapshot import Snapshot
from gitmesh.xds.sotw import Bodies, SotwStream
from gitmesh.xds.subscriptions import WILDCARD

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# gRPC refuses a larger request (RESOURCE_EXHAUSTED, which ends the stream) before it is parsed.
# A request's size is mostly the names it subscribes to, about 40 bytes each: 1 MiB is some 25,000.
MAX_REQUEST_BYTES = 1 << 20

_log = logging.getLogger(__name__)


class Nodes(Protocol):
    """Who the streams' nodes are, for the publisher of the cache the server reads."""

    def opened(self, node: base_pb2.Node) -> str:
        """The snapshot key a new stream of ``node`` is served from; ValueError refuses the node."""

    def closed(self, node_id: str, key: str) -> None:
        """A stream of ``node_id`` under ``key`` closed (others of the key may remain)."""


class NodeIds:
    """Snapshots keyed by Envoy's ``--service-node`` (bootstrap ``node.id``), published by hand."""

    def opened(self, node: base_pb2.Node) -> str:
        return str(node.id)

    def closed(self, node_id: str, key: str) -> None:
        pass


@dataclass
class StreamInfo:
    """What metrics and status pages show about one connected stream."""

    node_id: str
    key: str
    delta: bool
    acked: Callable[[], dict[str, str]]


class _End:
    """Marks the end of the request stream in a stream's inbox."""


_END = _End()
_WAKE = None


class _Inbox:
    """A stream's requests and wake-ups, in arrival order, for its one consumer. What
    ``asyncio.Queue`` does here, without its four deques (3 KiB a stream)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[object] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: object) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> object:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


# Judges a stream's node against the PEM certificate its peer presented (None: no TLS); returns
# why it is refused, or None to serve it.
Authorize = Callable[[base_pb2.Node, bytes | None], str | None]


class AggregatedDiscoveryServicer:
    """ADS over ``cache``: one protocol object per stream, woken by the cache."""

    def __init__(
        self,
        cache: SnapshotCache,
        nodes: Nodes,
        logger: logging.Logger | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._cache = cache
        self._nodes = nodes
        self._log = logger or _log
        self._authorize = authorize
        self.bursts = AfterBursts()
        self._bodies = Bodies()  # what the streams of a key are sent alike, written once
        self._connections: Counter[str] = Counter()
        self._streams: dict[int, StreamInfo] = {}
        self._next_stream = 0

    @property
    def connections(self) -> Mapping[str, int]:
        """Connected streams per node key."""
        return dict(self._connections)

    def streams(self) -> list[StreamInfo]:
        return list(self._streams.values())

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """Method handlers that write pre-encoded response bytes (hence no generated servicer)."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream_aggregated_resources,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=bytes,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.delta_aggregated_resources,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=bytes,
                ),
            },
        )

    async def stream_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, bytes],
    ) -> None:
        await self._serve_stream(requests, context, delta=False)

    async def delta_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DeltaDiscoveryRequest, bytes],
    ) -> None:
        await self._serve_stream(requests, context, delta=True)

    async def _serve_stream(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest, bytes
        ],
        *,
        delta: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        inbox = _Inbox()

        async def read() -> None:
            # context.read(), not the request iterator: waiting in the iterator keeps the last
            # message's buffer (a SotW EDS request names every cluster: 30 KiB a stream for 1,000).
            try:
                while (request := await context.read()) is not grpc.aio.EOF:
                    inbox.put(request)
                    del request  # not held while waiting for the next
            finally:
                inbox.put(_END)

        reader = asyncio.create_task(read())
        try:
            first = await inbox.get()
            if isinstance(first, _End):
                return
            node = first.node  # type: ignore[attr-defined]
            if not node.id:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
            if self._authorize is not None:
                peer = next(iter(context.auth_context().get("x509_pem_cert", ())), None)
                # It may ask the cluster (an injected pod's sidecar): off the loop.
                refusal = await loop.run_in_executor(None, self._authorize, node, peer)
                if refusal is not None:
                    self._log.warning("refused node %s from %s: %s", node.id, context.peer(), refusal)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            try:
                key = self._nodes.opened(node)
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            node_id = node.id
            del node  # a part of a request keeps the whole request alive
            woken = False

            def wake() -> None:
                nonlocal woken
                if not woken:
                    woken = True
                    loop.call_soon_threadsafe(inbox.put, _WAKE)

            def on_nack(type_url: str, version: str, message: str) -> None:
                nack = self._cache.record_nack(key, type_url, version, message)
                self._log.warning(
                    "proxy %s rejected %s version %s: %s", node_id, type_url, version, nack.message
                )

            stream: SotwStream | DeltaStream = (
                DeltaStream(on_nack) if delta else SotwStream(on_nack, self._bodies)
            )
            watch = self._cache.watch(key, wake, stream.outdated)
            stream_id = self._next_stream
            self._next_stream += 1
            self._streams[stream_id] = StreamInfo(node_id, key, delta, stream.acked)
            self._connections[key] += 1
            try:
                item: object = first
                del first
                while not isinstance(item, _End):
                    if item is _WAKE:
                        woken = False
                    await self._answer(context, stream, node_id, key, item)
                    del item  # not held while waiting for the next
                    item = await inbox.get()
            finally:
                watch.close()
                del self._streams[stream_id]
                self._connections[key] -= 1
                if not self._connections[key]:
                    del self._connections[key]
                self._nodes.closed(node_id, key)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _answer(
        self,
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest, bytes
        ],
        stream: SotwStream | DeltaStream,
        node_id: str,
        key: str,
        item: object,
    ) -> None:
        """Send what a request or a wake-up calls for. Its own coroutine so that the responses and the
        snapshot die when it returns: a stream waiting for its next request holds none of them
        (they are the size of the proxy's whole configuration)."""
        snapshot = self._cache.snapshot(key)
        responses: list[bytes] = []
        self.bursts.begin()
        try:
            if item is _WAKE:
                responses = stream.push(snapshot)
            else:
                self._log_foreign_secrets(node_id, item, snapshot)
                responses = stream.on_request(item, snapshot)
            for response in responses:
                await context.write(response)
        finally:
            self.bursts.end(bool(responses))

    def _log_foreign_secrets(self, node_id: str, request: object, snapshot: Snapshot | None) -> None:
        """A proxy is sent only its own secrets: asking for another's gets nothing, and is logged."""
        if getattr(request, "type_url", "") != resources.SECRET or snapshot is None:
            return
        asked = getattr(request, "resource_names_subscribe", ()) or getattr(request, "resource_names", ())
        foreign = sorted(set(asked) - snapshot.encoded(resources.SECRET).keys() - {WILDCARD})
        if foreign:
            more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
            self._log.warning(
                "proxy %s asked for secrets that are not its own, sent nothing: %s%s",
                node_id,
                foreign[:10],
                more,
            )


@dataclass(frozen=True)
class ServerTls:
    """The server's key and certificate chain and the roots client certificates must chain to (PEM).

    ``current`` is asked on every new connection, so renewed certificates and a rotated bundle
    take effect without a restart."""

    current: Callable[[], tuple[str, str, str]]  # (key, certificate chain, root bundle)


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    last = tls.current()

    def config(material: tuple[str, str, str]) -> grpc.ServerCertificateConfiguration:
        key, chain, roots = material
        return grpc.ssl_server_certificate_configuration([(key.encode(), chain.encode())], roots.encode())

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal last
        material = tls.current()
        if material == last:
            return None
        last = material
        return config(material)

    # grpc documents None from the fetcher as "no change"; its stubs leave None out.
    return grpc.dynamic_ssl_server_credentials(
        config(last),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


@dataclass
class RunningServer:
    """A started ADS server and the port it listens on."""

    server: grpc.aio.Server
    servicer: AggregatedDiscoveryServicer
    port: int

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)
        self.servicer.bursts.close()


async def serve(
    cache: SnapshotCache,
    address: str = "127.0.0.1:0",
    *,
    nodes: Nodes | None = None,
    logger: logging.Logger | None = None,
    tls: ServerTls | None = None,
    authorize: Authorize | None = None,
    max_connections: int = 0,
) -> RunningServer:
    """Start an ADS server on ``address`` (port 0 picks a free port): TLS with client certificates
    when ``tls`` is given, else plaintext. ``nodes`` keys the streams (by node id when None); with
    ``max_connections``, connections past it are closed as they arrive (each costs a file
    descriptor, and the process needs some for itself)."""
    servicer = AggregatedDiscoveryServicer(cache, nodes or NodeIds(), logger, authorize)
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 1 << 16),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            # Thousands of sidecars reconnect at once after a restart: their calls wait for the
            # event loop rather than being cancelled past gRPC's default of 1,000 waiting calls.
            ("grpc.server.max_pending_requests", 1 << 16),
            ("grpc.server.max_pending_requests_hard_limit", 1 << 16),
            # Each TLS connection keeps a frame buffer this size (16 KiB by default): at 4 KiB an mTLS
            # sidecar costs ~20 KiB less, for ~20% more CPU writing large responses.
            ("grpc.tsi.max_frame_size", 4096),
            ("grpc.enable_channelz", 0),  # per-call bookkeeping for an introspection gitmesh does not use
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            *([("grpc.max_allowed_incoming_connections", max_connections)] if max_connections else []),
        ]
    )
    server.add_generic_rpc_handlers((servicer.rpc_handler(),))
    port = server.add_secure_port(address, _credentials(tls)) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return RunningServer(server, servicer, port)


__all__ = [
    "MAX_REQUEST_BYTES",
    "SERVICE",
    "AggregatedDiscoveryServicer",
    "Authorize",
    "NodeIds",
    "Nodes",
    "RunningServer",
    "ServerTls",
    "StreamInfo",
    "serve",
]
