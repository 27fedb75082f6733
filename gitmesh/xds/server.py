"""The ADS gRPC server: state of the world and delta, over one ``SnapshotCache``.

This is the only module that imports grpc. Each stream is driven by a small
protocol object (``SotwStream`` / ``DeltaStream``) that turns requests and
cache wake-ups into encoded responses without doing I/O; the servicer only
moves bytes between the protocol object and the gRPC call.

Responses are written as bytes assembled from the snapshot's shared
``Any`` encodings, so no stream copies or re-serializes a resource.

With ``ServerTls`` the server speaks TLS and requires a client certificate; an
``authorize`` callback then judges each stream's node against its peer's
certificate before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sys
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources, wire
from gitmesh.xds.cache import SnapshotCache, Watch
from gitmesh.xds.snapshot import EncodedResource, Snapshot

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
WILDCARD = "*"
# gRPC refuses a larger request (RESOURCE_EXHAUSTED, which ends the stream) before it is parsed.
# A request's size is mostly the names it subscribes to, about 40 bytes each: 1 MiB is some 25,000.
MAX_REQUEST_BYTES = 1 << 20

_log = logging.getLogger(__name__)


# --- responses assembled from shared bytes ---


def _sotw_response(version: str, type_url: str, nonce: str, items: Iterable[EncodedResource]) -> bytes:
    """A serialized DiscoveryResponse: version_info=1, resources=2, type_url=4, nonce=5."""
    parts = [wire.field(1, version.encode())]
    for item in items:
        parts += (item.field_head, *item.parts)
    parts += (wire.field(4, type_url.encode()), wire.field(5, nonce.encode()))
    return b"".join(parts)


def _delta_entry(item: EncodedResource) -> tuple[bytes, ...]:
    """``item`` as a Resource{version=1, resource=2, name=3} in field 2 of a DeltaDiscoveryResponse,
    written once and kept on the item, which every stream and snapshot shares."""
    if item.delta_entry is None:
        head = wire.field(1, item.version.encode())
        tail = wire.field(3, item.name.encode())
        size = len(head) + len(item.field_head) + item.size + len(tail)
        item.delta_entry = (wire.field_head(2, size) + head + item.field_head, *item.parts, tail)
    return item.delta_entry


def _delta_response(
    system_version: str, type_url: str, nonce: str, items: Iterable[EncodedResource], removed: Iterable[str]
) -> bytes:
    """A serialized DeltaDiscoveryResponse of Resource{version=1, resource=2, name=3} entries."""
    parts = [wire.field(1, system_version.encode())]
    for item in items:
        parts += _delta_entry(item)
    parts += (wire.field(4, type_url.encode()), wire.field(5, nonce.encode()))
    parts += (wire.field(6, name.encode()) for name in removed)
    return b"".join(parts)


# --- per-stream protocol state, free of I/O ---


class OnNack(Protocol):
    def __call__(self, type_url: str, version: str, message: str) -> None: ...


def _push_order(type_urls: Iterable[str]) -> list[str]:
    return sorted(type_urls, key=lambda url: (resources.push_rank(url), url))


Names = frozenset[str]  # the resource names a stream subscribed to

# hash of the set -> the one shared set of those names while any stream holds it
_subscriptions: weakref.WeakValueDictionary[int, Names] = weakref.WeakValueDictionary()


def subscription(names: Iterable[str]) -> Names:
    """A thousand proxies subscribing to the same thousand clusters hold one set of interned names,
    not a thousand (a set that size is 32 KiB)."""
    wanted = frozenset(sys.intern(name) for name in names)
    shared = _subscriptions.get(hash(wanted))
    if shared is not None and shared == wanted:
        return shared
    _subscriptions[hash(wanted)] = wanted  # a different set with the same hash is simply not shared
    return wanted


# Names a stream subscribes to that are no resource of its snapshot: a proxy asks for what its
# clusters and listeners name, which the same snapshot holds, and a few ahead of a change at most.
MAX_UNKNOWN_NAMES = 100


def _capped(names: Iterable[str], snapshot: Snapshot | None, type_url: str) -> Iterator[str]:
    """``names`` that are resources of ``snapshot``, and the first MAX_UNKNOWN_NAMES others: a stream
    asking for 80,000 names that do not exist is not made to remember them."""
    known = snapshot.encoded(type_url) if snapshot is not None else {}
    unknown = 0
    for name in names:
        if name in known:
            yield name
        elif unknown < MAX_UNKNOWN_NAMES:
            unknown += 1
            yield name


class _SotwType:
    __slots__ = ("acked", "force", "names", "nonce", "sent")

    def __init__(self, names: Names | None, held: str) -> None:
        self.names = names  # None: the full set (LDS / CDS)
        self.sent = held  # version the proxy has or was last sent
        self.acked = held
        self.nonce = ""
        self.force = False


class SotwStream:
    """State-of-the-world ADS for one stream: what each type was sent, under which nonce."""

    def __init__(self, watch: Watch, on_nack: OnNack) -> None:
        self._watch = watch
        self._on_nack = on_nack
        self._types: dict[str, _SotwType] = {}
        self._nonces = 0

    def acked(self) -> dict[str, str]:
        """type URL -> last version the proxy accepted on this stream."""
        return {url: state.acked for url, state in self._types.items()}

    def on_request(self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None) -> list[bytes]:
        url = request.type_url
        state = self._types.get(url)
        names = (
            None
            if url in resources.WILDCARD_TYPES
            else subscription(_capped(request.resource_names, snapshot, url))
        )
        if not request.response_nonce:
            # A subscription (first, or renewed after reconnect): start from what the proxy holds.
            state = self._types[url] = _SotwType(names, request.version_info)
            self._watch.held[url] = request.version_info
            return self.push(snapshot)
        if state is None or request.response_nonce != state.nonce:
            return []  # an answer to a response that has since been superseded
        if request.HasField("error_detail"):
            self._on_nack(url, state.sent, request.error_detail.message)
            return []
        state.acked = request.version_info
        if names != state.names:
            state.names = names
            state.force = True
        return self.push(snapshot)

    def push(self, snapshot: Snapshot | None) -> list[bytes]:
        """Responses for every type whose content moved past what the stream holds, CDS first."""
        if snapshot is None:
            return []
        out = []
        clusters_sent = False
        for url in _push_order(self._types):
            state = self._types[url]
            version = snapshot.type_version(url)
            resend = state.force or (url == resources.ENDPOINT and clusters_sent)
            if version == state.sent and not resend:
                continue
            encoded = snapshot.encoded(url)
            if state.names is None:
                items: Iterable[EncodedResource] = encoded.values()
            else:
                items = [item for name, item in encoded.items() if name in state.names]
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent = version
            state.force = False
            self._watch.held[url] = version
            out.append(_sotw_response(version, url, state.nonce, items))
            clusters_sent |= url == resources.CLUSTER
        return out


class _Held:
    """Which version of each resource of one type a delta stream's proxy holds.

    Right after a push the proxy holds exactly the snapshot's resources of its subscription, so
    that is what is kept: the snapshot's map and the subscription, both shared with every stream of
    the key, plus the few names where the proxy differs since (None: not held). A per-stream map
    of a thousand clusters would cost more than everything else a stream keeps.
    """

    __slots__ = ("base", "differ", "scope")

    def __init__(self, versions: Mapping[str, str]) -> None:
        self.base: Mapping[str, EncodedResource] = {}
        self.scope: Names | None = None  # None: all of base
        self.differ: dict[str, str | None] = dict(versions)

    def get(self, name: str) -> str | None:
        if name in self.differ:
            return self.differ[name]
        item = self.base.get(name)
        if item is None or (self.scope is not None and name not in self.scope):
            return None
        return item.version

    def names(self) -> Iterator[str]:
        for name in self.base if self.scope is None else self.scope:
            if name in self.base and name not in self.differ:
                yield name
        yield from (name for name, version in self.differ.items() if version is not None)

    def forget(self, name: str) -> bool:
        """The proxy no longer holds ``name``; whether it did."""
        had = self.get(name) is not None
        if had:
            self.differ[name] = None
        return had

    def exactly(self, base: Mapping[str, EncodedResource], scope: Names | None) -> None:
        self.base, self.scope, self.differ = base, scope, {}


class _DeltaType:
    __slots__ = ("acked", "force", "held", "names", "nonce", "sent", "wildcard")

    def __init__(self, held: _Held, wildcard: bool) -> None:
        self.held = held
        self.wildcard = wildcard
        self.names = subscription(())
        self.nonce = ""
        self.sent = ""
        self.acked = ""
        self.force = True  # the first request always gets an answer


class DeltaStream:
    """Incremental ADS for one stream: per resource, the version the proxy has."""

    def __init__(self, watch: Watch, on_nack: OnNack) -> None:
        self._watch = watch
        self._on_nack = on_nack
        self._types: dict[str, _DeltaType] = {}
        self._nonces = 0

    def acked(self) -> dict[str, str]:
        return {url: state.acked for url, state in self._types.items()}

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> list[bytes]:
        url = request.type_url
        state = self._types.get(url)
        changes = bool(request.resource_names_subscribe or request.resource_names_unsubscribe)
        if state is None:
            # Legacy wildcard: LDS / CDS subscribed with no names means "everything".
            wildcard = url in resources.WILDCARD_TYPES and not request.resource_names_subscribe
            versions = request.initial_resource_versions
            held = _Held({sys.intern(name): versions[name] for name in _capped(versions, snapshot, url)})
            state = self._types[url] = _DeltaType(held, wildcard)
        elif request.response_nonce:
            if request.response_nonce == state.nonce:
                if request.HasField("error_detail"):
                    self._on_nack(url, state.sent, request.error_detail.message)
                else:
                    state.acked = state.sent
            if not changes:
                return []  # a bare ACK / NACK, or one for a superseded response
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if subscribe:
            state.force = True
        if WILDCARD in subscribe or WILDCARD in unsubscribe:
            state.wildcard = WILDCARD in subscribe
        if changes:
            state.names = subscription(
                _capped((state.names | subscribe) - unsubscribe - {WILDCARD}, snapshot, url)
            )
        for name in unsubscribe:
            state.held.forget(name)
        return self.push(snapshot)

    def push(self, snapshot: Snapshot | None) -> list[bytes]:
        """Only the resources that differ from what the proxy has, and the ones it has that are gone."""
        if snapshot is None:
            return []
        out = []
        for url in _push_order(self._types):
            state = self._types[url]
            version = snapshot.type_version(url)
            if version == self._watch.held.get(url) and not state.force:
                continue
            self._watch.held[url] = version
            encoded = snapshot.encoded(url)
            scope = None if state.wildcard else state.names
            held = state.held
            changed = [
                item
                for name, item in encoded.items()
                if (scope is None or name in scope) and held.get(name) != item.version
            ]
            removed = sorted(n for n in held.names() if n not in encoded or not (scope is None or n in scope))
            held.exactly(encoded, scope)  # what it holds once this response is applied
            if not changed and not removed and not (state.force and not state.nonce):
                state.force = False
                continue
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent = version
            state.force = False
            out.append(_delta_response(snapshot.version, url, state.nonce, changed, removed))
            if url == resources.CLUSTER and changed:
                self._resend_endpoints(snapshot, [item.name for item in changed])
        return out

    def _resend_endpoints(self, snapshot: Snapshot, clusters: list[str]) -> None:
        """An updated EDS cluster warms until it gets its endpoints again, changed or not."""
        state = self._types.get(resources.ENDPOINT)
        if state is None:
            return
        for name in snapshot.eds_names(clusters):
            if state.held.forget(name):
                state.force = True


# --- giving memory back after bursts ---


def trim_free_memory() -> None:
    """glibc's ``malloc_trim(0)``: the free pages of every heap go back to the OS (elsewhere: nothing)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class AfterBursts:
    """Calls ``release`` (in a thread) once writing has paused for ``settle`` seconds after a burst.

    A push to every proxy holds a response per stream at once (a split change: a thousand route
    configurations of 240 KiB). Sent and freed, that memory stays in glibc's heaps, as the process's
    RSS, until given back; a server that pushes in bursts and idles in between gives it back."""

    def __init__(self, release: Callable[[], None] = trim_free_memory, settle: float = 1.0) -> None:
        self._release = release
        self._settle = settle
        self._writing = 0
        self._wrote = False
        self._timer: asyncio.TimerHandle | None = None
        self.releases = 0

    def begin(self) -> None:
        self._writing += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def end(self, wrote: bool) -> None:
        self._writing -= 1
        self._wrote |= wrote
        if not self._writing and self._wrote:
            self._timer = asyncio.get_running_loop().call_later(self._settle, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wrote = False
        self.releases += 1
        asyncio.get_running_loop().run_in_executor(None, self._release)

    def close(self) -> None:
        """No release after the server stops (its loop may be shutting its threads down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- the servicer ---


@dataclass
class StreamInfo:
    """What metrics and status pages show about one connected stream."""

    node_id: str
    key: str
    delta: bool
    acked: Callable[[], dict[str, str]]
    admin: str = ""  # the sidecar's admin interface, HOST:PORT, as its bootstrap gives it


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
        logger: logging.Logger | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._cache = cache
        self._log = logger or _log
        self._authorize = authorize
        self.bursts = AfterBursts()
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
                refusal = self._authorize(node, peer)
                if refusal is not None:
                    self._log.warning("refused node %s from %s: %s", node.id, context.peer(), refusal)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            key = self._cache.key_for(node)
            node_id = node.id
            admin = str(node.metadata.fields["admin_address"].string_value)
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

            watch = self._cache.watch(key, wake)
            stream: SotwStream | DeltaStream = (DeltaStream if delta else SotwStream)(watch, on_nack)
            stream_id = self._next_stream
            self._next_stream += 1
            self._streams[stream_id] = StreamInfo(node_id, key, delta, stream.acked, admin)
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
    logger: logging.Logger | None = None,
    tls: ServerTls | None = None,
    authorize: Authorize | None = None,
    max_connections: int = 0,
) -> RunningServer:
    """Start an ADS server on ``address`` (port 0 picks a free port): TLS with client certificates
    when ``tls`` is given, else plaintext; with ``max_connections``, connections past it are closed
    as they arrive (each costs a file descriptor, and the process needs some for itself)."""
    servicer = AggregatedDiscoveryServicer(cache, logger, authorize)
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
    "MAX_UNKNOWN_NAMES",
    "SERVICE",
    "AfterBursts",
    "AggregatedDiscoveryServicer",
    "Authorize",
    "DeltaStream",
    "RunningServer",
    "ServerTls",
    "SotwStream",
    "StreamInfo",
    "serve",
    "subscription",
    "trim_free_memory",
]
