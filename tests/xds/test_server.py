"""The ADS server over real gRPC, driven by a fake proxy speaking through the generated stub."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from gitmesh.xds import resources
from gitmesh.xds.cache import SnapshotCache
from gitmesh.xds.server import Nodes, RunningServer, serve
from tests.xds import builders as b

CDS, EDS, LDS, RDS = resources.CLUSTER, resources.ENDPOINT, resources.LISTENER, resources.ROUTE
NODE = "proxy-1"
QUIET = 0.3  # how long "no response" is awaited


class FakeProxy:
    """One ADS stream; the node goes on the first request only, as Envoy may do."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, *, delta: bool = False) -> None:
        self.delta = delta
        self.call: Any = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self._node_sent = False
        # Reading in one task: cancelling a pending read would cancel the whole call.
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self._responses.put_nowait(response)

    async def send(self, type_url: str, **fields: Any) -> None:
        message = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        request = message(type_url=type_url, **fields)
        if not self._node_sent:
            request.node.CopyFrom(base_pb2.Node(id=NODE, cluster="test"))
            self._node_sent = True
        await self.call.write(request)

    async def recv(self) -> Any:
        return await asyncio.wait_for(self._responses.get(), 3)

    async def silent(self) -> None:
        """Nothing arrives for a while."""
        await asyncio.sleep(QUIET)
        assert self._responses.empty(), f"unexpected response: {self._responses.get_nowait()}"

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def ack(self, response: discovery_pb2.DiscoveryResponse, **fields: Any) -> None:
        await self.send(
            response.type_url, version_info=response.version_info, response_nonce=response.nonce, **fields
        )

    async def nack(self, response: Any, error: str, version: str = "") -> None:
        detail = status_pb2.Status(code=3, message=error)
        if self.delta:
            await self.send(response.type_url, response_nonce=response.nonce, error_detail=detail)
        else:
            await self.send(
                response.type_url, version_info=version, response_nonce=response.nonce, error_detail=detail
            )


class Proxies:
    """Opens fake proxies on one channel and closes them all at the end of a test."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        self.stub = stub
        self._open: list[FakeProxy] = []

    def __call__(self, *, delta: bool = False) -> FakeProxy:
        proxy = FakeProxy(self.stub, delta=delta)
        self._open.append(proxy)
        return proxy

    async def close(self) -> None:
        for proxy in self._open:
            await proxy.close()


Scenario = Callable[[SnapshotCache, RunningServer, Proxies], Awaitable[None]]


def run(scenario: Scenario, nodes: Nodes | None = None) -> None:
    """Run ``scenario`` against a fresh server on a free loopback port."""

    async def main() -> None:
        cache = SnapshotCache()
        running = await serve(cache, "127.0.0.1:0", nodes=nodes)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        proxies = Proxies(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
        try:
            await scenario(cache, running, proxies)
        finally:
            await proxies.close()
            await channel.close()
            await running.stop(None)

    asyncio.run(main())


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        for message in (cluster_pb2.Cluster(), *(_messages())):
            if packed.Is(message.DESCRIPTOR):
                packed.Unpack(message)
                out.append(message.cluster_name if packed.type_url == EDS else message.name)
    return out


def _messages() -> tuple[Any, ...]:
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    return endpoint_pb2.ClusterLoadAssignment(), listener_pb2.Listener(), route_pb2.RouteConfiguration()


async def subscribe_all(proxy: FakeProxy, eds: list[str], rds: list[str]) -> None:
    await proxy.send(CDS)
    await proxy.send(EDS, resource_names=eds)
    await proxy.send(LDS)
    await proxy.send(RDS, resource_names=rds)


async def receive_all(proxy: FakeProxy, count: int) -> list[discovery_pb2.DiscoveryResponse]:
    return [await proxy.recv() for _ in range(count)]


async def wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


# --- state of the world ---


def test_push_order_fresh_nonces_and_acks() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        proxy = connect()
        await subscribe_all(proxy, ["web"], ["http"])
        await proxy.silent()  # no snapshot yet: nothing to say
        snapshot = b.mesh("v1")
        cache.set_snapshot(NODE, snapshot)
        got = await receive_all(proxy, 4)
        assert [r.type_url for r in got] == [CDS, EDS, LDS, RDS]
        assert [r.version_info for r in got] == [snapshot.type_version(r.type_url) for r in got]
        assert [names(r) for r in got] == [["web"], ["web"], ["http"], ["http"]]
        for response in got:
            await proxy.ack(
                response, resource_names=names(response) if response.type_url in (EDS, RDS) else []
            )
        await proxy.silent()  # ACKs are not answered

        cache.set_snapshot(NODE, b.mesh("v2", upstream_port=9001))  # endpoints only
        [eds] = await receive_all(proxy, 1)
        assert eds.type_url == EDS
        await proxy.ack(eds, resource_names=["web"])
        await proxy.silent()

        cache.set_snapshot(NODE, b.mesh("v3", upstream_port=9001, listener=b.listener("http", 10001, "http")))
        [lds] = await receive_all(proxy, 1)
        assert lds.type_url == LDS
        await proxy.ack(lds)
        nonces = [r.nonce for r in (*got, eds, lds)]
        assert len(set(nonces)) == len(nonces)

        await wait_for(lambda: running.servicer.streams()[0].acked()[LDS] == lds.version_info)
        [info] = running.servicer.streams()
        assert info.acked() == {CDS: got[0].version_info, EDS: eds.version_info, LDS: lds.version_info,
                                RDS: got[3].version_info}  # fmt: skip
        assert running.servicer.connections == {NODE: 1}
        await proxy.close()
        await wait_for(lambda: running.servicer.connections == {})
        assert cache.watch_count(NODE) == 0

    run(scenario)


def test_cluster_change_resends_endpoints_after_clusters() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        proxy = connect()
        cache.set_snapshot(NODE, b.mesh("v1"))
        await subscribe_all(proxy, ["web"], ["http"])
        first = await receive_all(proxy, 4)
        for response in first:
            await proxy.ack(
                response, resource_names=names(response) if response.type_url in (EDS, RDS) else []
            )
        cache.set_snapshot(NODE, b.mesh("v2", cluster=b.eds_cluster("web", timeout_ms=2000)))
        cds, eds = await receive_all(proxy, 2)
        assert (cds.type_url, eds.type_url) == (CDS, EDS)
        assert cds.version_info != first[0].version_info
        assert eds.version_info == first[1].version_info and eds.nonce != first[1].nonce
        await proxy.silent()

    run(scenario)


def test_wildcard_types_carry_the_full_set_others_the_requested_names() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        cache.set_snapshot(
            NODE,
            b.snapshot(
                "v1",
                b.static_cluster("a", 1),
                b.static_cluster("b", 2),
                b.eds_cluster("c"),
                b.assignment("c", 3),
                b.route("r1", body="1"),
                b.route("r2", body="2"),
            ),
        )
        proxy = connect()
        await proxy.send(CDS, resource_names=["a"])  # LDS/CDS always get everything
        assert sorted(names(await proxy.recv())) == ["a", "b", "c"]
        await proxy.send(RDS, resource_names=["r2", "missing"])
        rds = await proxy.recv()
        assert names(rds) == ["r2"]
        await proxy.ack(rds, resource_names=["r1", "r2"])  # a changed subscription is answered
        rds = await proxy.recv()
        assert names(rds) == ["r1", "r2"]

    run(scenario)


def test_nack_is_recorded_logged_and_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        cache.set_snapshot(NODE, b.mesh("v1"))
        proxy = connect()
        await proxy.send(LDS)
        await proxy.send(CDS)
        lds, cds = await receive_all(proxy, 2)
        await proxy.ack(cds)
        with caplog.at_level(logging.WARNING, logger="gitmesh.xds.server"):
            await proxy.nack(lds, "Invalid regex: missing )")
            await proxy.silent()
        [nack] = cache.nacks(NODE)
        assert (nack.type_url, nack.version, nack.message) == (
            LDS,
            lds.version_info,
            "Invalid regex: missing )",
        )
        assert NODE in caplog.text and "Invalid regex: missing )" in caplog.text

        cache.set_snapshot(NODE, b.mesh("v2", cluster=b.eds_cluster("web", timeout_ms=5)))  # LDS unchanged
        [again] = await receive_all(proxy, 1)
        assert again.type_url == CDS
        await proxy.silent()  # the rejected listeners are not sent again
        assert running.servicer.streams()[0].acked()[LDS] == ""

    run(scenario)


def test_stale_nonce_gets_no_response() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        cache.set_snapshot(NODE, b.mesh("v1"))
        proxy = connect()
        await proxy.send(RDS, resource_names=["http"])
        old = await proxy.recv()
        cache.set_snapshot(NODE, b.mesh("v2", route=b.route("http", body="new")))
        new = await proxy.recv()
        assert new.nonce != old.nonce
        await proxy.nack(old, "late complaint")  # answers a superseded response
        await proxy.ack(old, resource_names=["http", "other"])  # ... even with a new subscription
        await proxy.silent()
        assert cache.nacks(NODE) == []
        await proxy.ack(new, resource_names=["http", "other"])  # the latest nonce is heard
        assert names(await proxy.recv()) == ["http"]

    run(scenario)


def test_reconnect_with_current_versions_is_not_resent() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        snapshot = b.mesh("v1")
        cache.set_snapshot(NODE, snapshot)
        proxy = connect()
        await proxy.send(CDS, version_info=snapshot.type_version(CDS))
        await proxy.send(LDS, version_info="something-older")
        assert (await proxy.recv()).type_url == LDS
        await proxy.silent()

    run(scenario)


def test_the_server_gives_memory_back_after_pushing() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        assert running.servicer.bursts.releases == 0
        cache.set_snapshot(NODE, b.mesh("v1"))
        proxy = connect()
        await proxy.send(CDS)
        await proxy.recv()
        await wait_for(lambda: running.servicer.bursts.releases == 1, 10)  # a second after the burst

    run(scenario)


def test_first_request_must_name_the_node() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        call = connect.stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call.read()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


class ByCluster:
    """Keys streams by their node's cluster; refuses nodes of cluster "stranger"."""

    def __init__(self) -> None:
        self.closed_streams: list[tuple[str, str]] = []

    def opened(self, node: base_pb2.Node) -> str:
        if node.cluster == "stranger":
            raise ValueError(f"node {node.id!r} is nobody we know")
        return f"cluster/{node.cluster}"

    def closed(self, node_id: str, key: str) -> None:
        self.closed_streams.append((node_id, key))


def test_nodes_key_the_streams_and_hear_when_they_close() -> None:
    nodes = ByCluster()

    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        cache.set_snapshot("cluster/test", b.mesh("v1"))  # FakeProxy's node is of cluster "test"
        proxy = connect()
        await proxy.send(CDS)
        assert names(await proxy.recv()) == ["web"]
        assert running.servicer.connections == {"cluster/test": 1}
        await proxy.close()
        await wait_for(lambda: nodes.closed_streams == [(NODE, "cluster/test")])

        stranger = connect.stub.StreamAggregatedResources()
        await stranger.write(
            discovery_pb2.DiscoveryRequest(type_url=CDS, node=base_pb2.Node(id="x", cluster="stranger"))
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nobody we know" in str(refused.value.details())

    run(scenario, nodes)


# --- delta ---


def delta_names(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


def test_delta_sends_only_changes_and_removals() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        first = b.snapshot("v1", b.static_cluster("a", 1), b.static_cluster("b", 2))
        cache.set_snapshot(NODE, first)
        proxy = connect(delta=True)
        known_a = first.encoded(CDS)["a"].version
        await proxy.send(CDS, initial_resource_versions={"a": known_a, "gone": "x"})
        response = await proxy.recv()
        assert delta_names(response) == {"b": first.encoded(CDS)["b"].version}
        assert list(response.removed_resources) == ["gone"]
        assert response.system_version_info == "v1"
        await proxy.send(CDS, response_nonce=response.nonce)  # ACK
        await proxy.silent()

        cache.set_snapshot(NODE, b.snapshot("v2", b.static_cluster("a", 1), b.static_cluster("b", 3)))
        response = await proxy.recv()
        assert list(delta_names(response)) == ["b"] and not response.removed_resources
        cache.set_snapshot(NODE, b.snapshot("v3", b.static_cluster("b", 3)))
        response = await proxy.recv()
        assert delta_names(response) == {} and list(response.removed_resources) == ["a"]
        await proxy.nack(response, "no thanks")
        await proxy.silent()
        assert [n.message for n in cache.nacks(NODE)] == ["no thanks"]
        assert running.servicer.streams()[0].acked() == {CDS: first.type_version(CDS)}

    run(scenario)


def test_delta_subscribe_unsubscribe_and_endpoint_resend() -> None:
    async def scenario(cache: SnapshotCache, running: RunningServer, connect: Proxies) -> None:
        two = b.snapshot(
            "v1", b.eds_cluster("a"), b.eds_cluster("b"), b.assignment("a", 1), b.assignment("b", 2)
        )
        cache.set_snapshot(NODE, two)
        proxy = connect(delta=True)
        await proxy.send(CDS)
        cds = await proxy.recv()
        assert sorted(delta_names(cds)) == ["a", "b"]
        await proxy.send(EDS, response_nonce=cds.nonce, resource_names_subscribe=["a"])
        eds = await proxy.recv()
        assert list(delta_names(eds)) == ["a"]
        await proxy.send(EDS, response_nonce=eds.nonce, resource_names_subscribe=["b"])
        eds = await proxy.recv()
        assert list(delta_names(eds)) == ["b"]
        await proxy.send(EDS, response_nonce=eds.nonce, resource_names_unsubscribe=["a"])
        await proxy.silent()  # unsubscribing needs no answer ...
        cache.set_snapshot(
            NODE,
            b.snapshot(
                "v2", b.eds_cluster("a"), b.eds_cluster("b"), b.assignment("a", 7), b.assignment("b", 2)
            ),
        )
        await proxy.silent()  # ... and "a" is no longer sent

        changed = b.snapshot(
            "v3",
            b.eds_cluster("a"),
            b.eds_cluster("b", timeout_ms=9),
            b.assignment("a", 7),
            b.assignment("b", 2),
        )
        cache.set_snapshot(NODE, changed)
        cds, eds = await receive_all(proxy, 2)
        assert (list(delta_names(cds)), list(delta_names(eds))) == (["b"], ["b"])
        assert eds.type_url == EDS

    run(scenario)


def test_a_storm_of_streams_waits_for_a_busy_server_rather_than_failing() -> None:
    """More streams than gRPC's default of 1,000 waiting calls arrive while the server's event loop
    is busy (as when every sidecar reconnects to a restarted gitmesh): each is served once it is free."""
    storm = 1200
    cache = SnapshotCache()
    cache.set_snapshot(NODE, b.mesh("v1"))
    server_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=server_loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(serve(cache, "127.0.0.1:0"), server_loop).result(10)
    request = discovery_pb2.DiscoveryRequest(type_url=CDS, node=base_pb2.Node(id=NODE)).SerializeToString()

    async def one() -> str:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{running.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        try:
            call = channel.stream_stream(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                request_serializer=bytes,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            await call.write(request)
            response = await asyncio.wait_for(call.read(), 60)
            call.cancel()
            return str(response.type_url)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        finally:
            await channel.close()

    async def clients() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(storm)))

    try:
        server_loop.call_soon_threadsafe(time.sleep, 3)  # busy while the storm arrives
        answers = asyncio.run(clients())
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(None), server_loop).result(30)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(10)
        server_loop.close()
    assert collections.Counter(answers) == {CDS: storm}
