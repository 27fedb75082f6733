"""The xDS port under attack: a real ``gitmesh run`` serving the bookstore from Git, and ADS clients
holding mesh certificates (as a compromised sidecar would) that misbehave. Each test prints the
controller's RSS before, at its peak during, and after the attack, and its threads and open files
after it."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from gitmesh.certs import ca
from gitmesh.demo import eventually
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.settings import embedded
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.cache import MAX_NACK_MESSAGE, MAX_NACKS_PER_NODE
from gitmesh.xds.translate import Proxy
from tests import factory as f
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.controller import RunningController

pytestmark = pytest.mark.integration

MiB = 1 << 20
BOOKBUYER = Identity("bookbuyer", "bookbuyer")
BOOKSTORE = Identity("bookstore", "bookstore")
BOOKTHIEF = Identity("bookthief", "bookthief")
V1_INBOUND_PORT = 16006  # where the mesh's EndpointSlice says bookstore-v1's sidecar listens (127.0.0.1)
SPLIT = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()


def proxy(identity: Identity, *, app_port: int = 8080) -> Proxy:
    """A sidecar of ``identity`` fronting the service of its name; the app port makes its node key."""
    return Proxy(identity, ServiceRef(identity.namespace, identity.name), app_port, 15001, 15006)


def node(p: Proxy) -> base_pb2.Node:
    config = bootstrap(p, xds_host="127.0.0.1", xds_port=1, admin_port=0)
    return json_format.ParseDict(config["node"], base_pb2.Node())


class Rss:
    """The controller's resident memory, sampled every 20 ms between ``start`` and ``stop``, and its
    threads and open files at ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.now())
            except (OSError, AssertionError):
                return  # the controller is gone; the test says why

    def start(self) -> Rss:
        self.before = self.peak = self.now()
        self._sampler.start()
        return self

    def stop(self, what: str) -> int:
        """After the attack (let the controller settle first): RSS growth, and prints the figures."""
        self._stop.set()
        self._sampler.join()
        self.after = self.now()
        self.peak = max(self.peak, self.after)
        threads = len(list(Path(f"/proc/{self.pid}/task").iterdir()))
        fds = len(list(Path(f"/proc/{self.pid}/fd").iterdir()))
        print(
            f"{what}: controller RSS before {self.before / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB, "
            f"after {self.after / MiB:.1f} MiB; after: {threads} threads, {fds} open files"
        )
        return self.after - self.before


class Attacker:
    """ADS clients holding genuine mesh certificates, on one mTLS channel to the controller."""

    def __init__(self, store: Path, xds_port: int) -> None:
        state = embedded(store).state.ca.load()  # the controller made the mesh CA at start
        assert state is not None
        self.state = state
        self.xds_port = xds_port

    @asynccontextmanager
    async def channel(self, identity: Identity) -> AsyncIterator[ads_pb2_grpc.AggregatedDiscoveryServiceStub]:
        issued = ca.issue(
            self.state.signing, self.state.trust_domain, identity, datetime.datetime.now(datetime.UTC)
        )
        credentials = grpc.ssl_channel_credentials(
            "".join(self.state.bundle()).encode(), issued.key_pem.encode(), issued.cert_pem.encode()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{self.xds_port}", credentials) as channel:
            yield ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


async def ask(
    call: Any, p: Proxy | None, type_url: str, names: list[str] | None = None
) -> discovery_pb2.DiscoveryResponse:
    """Subscribe (the node only on a stream's first request) and wait for the answer."""
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [])
    if p is not None:
        request.node.CopyFrom(node(p))
    await call.write(request)
    response = await asyncio.wait_for(call.read(), 20)
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    return response


def unpacked(response: discovery_pb2.DiscoveryResponse, kind: type[Any]) -> list[Any]:
    out = []
    for packed in response.resources:
        message = kind()
        packed.Unpack(message)
        out.append(message)
    return out


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    """The bookstore, and an EndpointSlice saying where bookstore-v1's sidecar listens."""
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "bookstore-v1-local",
            "namespace": "bookstore",
            "labels": {"kubernetes.io/service-name": "bookstore-v1"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": V1_INBOUND_PORT}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }
    (git_repo.path / "mesh/bookstore/endpoints.yaml").write_text(f.dump(slice_))
    git_repo.commit("bookstore")
    return git_repo


@pytest.fixture
def controller(mesh: GitRepo, tmp_path: Path) -> Iterator[RunningController]:
    store = tmp_path / "store.db"
    c = RunningController(
        tmp_path, ["--repo", mesh.path, "--path", "mesh", "--store", store, "--interval", "1s"]
    )
    c.start()
    try:
        c.wait_applied(mesh.git("rev-parse", "HEAD").strip())
        yield c
    finally:
        assert c.stop() == 0


async def served(c: RunningController) -> None:
    """Until the controller serves the applied mesh over ADS (it reads the store every 0.2 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with attacker(c).channel(BOOKBUYER) as stub:
            call = stub.StreamAggregatedResources()
            response = await ask(call, proxy(BOOKBUYER), resources.CLUSTER)
            call.cancel()
        if response.resources:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the controller does not serve the mesh over ADS")


def store_of(c: RunningController) -> Path:
    return Path(c.args[c.args.index("--store") + 1])


def attacker(c: RunningController) -> Attacker:
    return Attacker(store_of(c), c.xds_port)


def pid(c: RunningController) -> int:
    assert c.process is not None
    return c.process.pid


def test_a_nack_storm_keeps_a_few_kib_per_proxy(controller: RunningController) -> None:
    """60 NACKs of 900 KiB each from six proxies: each kept clipped, a bounded number of them; a
    NACK over the request cap ends its stream; the report, the store and `gitmesh status` stay small."""
    store = store_of(controller)
    rss = Rss(pid(controller)).start()
    storm = "x" * (900 * 1024)

    async def main() -> None:
        await served(controller)
        async with attacker(controller).channel(BOOKBUYER) as stub:
            calls = [stub.StreamAggregatedResources() for _ in range(6)]
            for i, call in enumerate(calls):
                response = await ask(call, proxy(BOOKBUYER, app_port=9000 + i), resources.LISTENER)
                for _ in range(10):
                    detail = status_pb2.Status(code=3, message=storm)
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=resources.LISTENER, response_nonce=response.nonce, error_detail=detail
                        )
                    )
            # One more, over the 1 MiB request cap: refused by gRPC before it is read, and the stream ends.
            oversized = stub.StreamAggregatedResources()
            response = await ask(oversized, proxy(BOOKBUYER, app_port=9100), resources.LISTENER)
            await oversized.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=resources.LISTENER,
                    response_nonce=response.nonce,
                    error_detail=status_pb2.Status(code=3, message="y" * (3 * MiB)),
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(oversized.read(), 20)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            def reported() -> list[dict[str, Any]]:
                report = embedded(store).state.xds.latest() or {}
                return [n for n in report.get("nacks", ()) if n["message"].startswith("xxx")]

            # Read while the proxies are connected: the report lists connected proxies' rejections.
            nacks = eventually(reported, lambda n: len(n) == 6 * MAX_NACKS_PER_NODE, "the NACKs reported", 30)
            marker = f" [truncated: {len(storm):,} bytes]"
            assert all(n["message"] == storm[:MAX_NACK_MESSAGE] + marker for n in nacks)
            status = subprocess.run(
                [sys.executable, "-m", "gitmesh", "status", "--store", str(store), "--output", "json"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
            print(f"gitmesh status: {len(status):,} bytes; store {store.stat().st_size:,} bytes")
            assert len(status) < 512 * 1024
            assert store.stat().st_size < 4 * MiB
            for call in calls:
                call.cancel()

    asyncio.run(main())
    time.sleep(2)  # the streams' buffers are freed
    assert rss.stop("60 NACKs of 900 KiB") < 64 * MiB


async def subscribe_eds(stub: Any, names: list[str], *, delta: bool) -> tuple[Any, list[str]]:
    """A new stream of bookbuyer's asking for these load assignments; the names of those it is sent."""
    if not delta:
        call = stub.StreamAggregatedResources()
        response = await ask(call, proxy(BOOKBUYER), resources.ENDPOINT, names)
        return call, [a.cluster_name for a in unpacked(response, endpoint_pb2.ClusterLoadAssignment)]
    call = stub.DeltaAggregatedResources()
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(
            node=node(proxy(BOOKBUYER)), type_url=resources.ENDPOINT, resource_names_subscribe=names
        )
    )
    response = await asyncio.wait_for(call.read(), 20)
    return call, [r.name for r in response.resources]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_subscribing_to_names_that_do_not_exist_costs_nothing_to_keep(
    controller: RunningController, delta: bool
) -> None:
    """40 streams asking for 30,000 EDS names each, none alike: the server keeps the names of its
    snapshot and a few others per stream, and answers with what exists."""
    rss = Rss(pid(controller)).start()
    real = "bookstore/bookstore-v1|14001"

    async def main() -> None:
        await served(controller)
        async with attacker(controller).channel(BOOKBUYER) as stub:
            calls = []
            for i in range(40):
                names = [f"ns-{i:02d}/svc-{n:05d}|8080" for n in range(30_000)] + [real]
                call, sent = await subscribe_eds(stub, names, delta=delta)
                assert sent == [real]
                calls.append(call)
            held = rss.now()
            print(f"40 streams open: controller RSS {held / MiB:.1f} MiB")
            assert held - rss.before < 48 * MiB
            # 80,000 names are over the 1 MiB request cap: refused before they are read.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await subscribe_eds(stub, [f"ns-99/svc-{n:06d}|8080" for n in range(80_000)], delta=delta)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in calls:
                call.cancel()

    asyncio.run(main())
    time.sleep(2)
    assert rss.stop("40 streams x 30,000 EDS names") < 48 * MiB


def bookstore_weights(response: discovery_pb2.DiscoveryResponse) -> dict[str, int]:
    (outbound,) = unpacked(response, route_pb2.RouteConfiguration)
    (host,) = [h for h in outbound.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    return {c.name: c.weight.value for c in host.routes[0].route.weighted_clusters.clusters}


def test_proxies_that_come_and_go_leave_nothing_behind(controller: RunningController, mesh: GitRepo) -> None:
    """2,000 streams of one certificate, each a new node key (a new app port), opened and closed:
    memory comes back to where it was, and a split change reaches a connected proxy as before."""
    rss = Rss(pid(controller)).start()

    async def split_change(stub: Any, weights: tuple[int, int]) -> float:
        """Seconds from the commit until the connected proxy holds the new weights."""
        call = stub.StreamAggregatedResources()
        response = await ask(call, proxy(BOOKBUYER), resources.ROUTE, ["outbound"])
        await call.write(
            discovery_pb2.DiscoveryRequest(
                type_url=resources.ROUTE,
                resource_names=["outbound"],
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
        )
        started = time.monotonic()
        text = SPLIT.replace("weight: 75", f"weight: {weights[0]}").replace(
            "weight: 25", f"weight: {weights[1]}"
        )
        await asyncio.to_thread(mesh.commit, f"split {weights}", {"mesh/bookstore/split.yaml": text})
        response = await asyncio.wait_for(call.read(), 30)
        call.cancel()
        assert list(bookstore_weights(response).values()) == list(weights)
        return time.monotonic() - started

    async def churn(stub: Any, count: int) -> None:
        async def one(i: int) -> None:
            call = stub.StreamAggregatedResources()
            await ask(call, proxy(BOOKBUYER, app_port=20_000 + i), resources.LISTENER)
            call.cancel()

        for start in range(0, count, 25):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 25, count))))

    async def main() -> tuple[float, float]:
        await served(controller)
        async with attacker(controller).channel(BOOKBUYER) as stub:
            await churn(stub, 100)  # what the first proxies cost once (imports, caches) is not growth
            before = await split_change(stub, (60, 40))
            rss.before = rss.now()
            await churn(stub, 2_000)
            await asyncio.sleep(2)  # the freed memory is given back after a burst
            after = await split_change(stub, (30, 70))
            return before, after

    before, after = asyncio.run(main())
    print(f"split change to the connected proxy: {before:.2f} s before the churn, {after:.2f} s after")
    eventually(
        lambda: controller.metric("gitmesh_xds_connected_proxies"), lambda n: n == 0, "every stream gone"
    )
    assert rss.stop("2,000 node keys opened and closed") < 16 * MiB
    assert after < before + 5  # loosely: the poll interval is 1 s; every node key republished took far longer


@pytest.mark.parametrize(
    ("claim", "refusal"),
    [
        (
            Proxy(BOOKBUYER, ServiceRef("bookstore", "bookstore"), 8080, 15001, 15006),
            "only an identity of the service's own namespace can back it",
        ),
        (
            Proxy(BOOKSTORE, ServiceRef("bookstore", "bookstore-v1"), 8080, 15001, 15006, (), "10.0.0.9"),
            "at 10.0.0.9, which is not the address of any of its endpoints",
        ),
    ],
    ids=["another-namespace", "not-an-endpoint"],
)
def test_a_node_claiming_a_service_its_identity_does_not_back_is_refused(
    controller: RunningController, claim: Proxy, refusal: str
) -> None:
    rss = Rss(pid(controller)).start()

    async def main() -> None:
        await served(controller)
        async with attacker(controller).channel(claim.identity) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ask(stub.StreamAggregatedResources(), claim, resources.LISTENER)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refusal in (refused.value.details() or "")
            # The same identity at the service's endpoint is served.
            backed = Proxy(BOOKSTORE, ServiceRef("bookstore", "bookstore-v1"), 8080, 15001, V1_INBOUND_PORT)
            if claim.identity == BOOKSTORE:
                response = await ask(stub.StreamAggregatedResources(), backed, resources.LISTENER)
                assert {"inbound", "outbound"} <= {r.name for r in unpacked(response, listener_pb2.Listener)}

    asyncio.run(main())
    rss.stop("service claims")
    assert refusal in controller.log.read_text()


# The clusters, load assignments and outbound virtual hosts sent (but the one that refuses), and the
# clusters the outbound routes name.
View = tuple[set[str], set[str], set[str], set[str]]


def test_a_proxy_reads_only_what_its_identity_may_call(controller: RunningController) -> None:
    """bookthief, which no TrafficTarget names, asks for everything and gets no cluster, endpoint or
    route of anyone's (only the virtual host its sidecar refuses the mesh's services with, 403, which
    leads nowhere); bookbuyer gets the bookstore's (which it may call) and no other namespace's."""
    rss = Rss(pid(controller)).start()
    every_eds = [
        f"{ns}/{name}|{port}"
        for ns, name, port in [
            ("bookstore", "bookstore", 14001),
            ("bookstore", "bookstore-v1", 14001),
            ("bookstore", "bookstore-v2", 14001),
            ("bookwarehouse", "bookwarehouse", 14001),
            ("bookwarehouse", "mysql", 3306),
            ("bookbuyer", "bookbuyer", 14001),
            ("bookthief", "bookthief", 14001),
        ]
    ]

    async def view(identity: Identity) -> View:
        async with attacker(controller).channel(identity) as stub:
            call = stub.StreamAggregatedResources()
            clusters = await ask(call, proxy(identity), resources.CLUSTER)
            endpoints = await ask(call, None, resources.ENDPOINT, every_eds)
            routes = await ask(call, None, resources.ROUTE, ["outbound", "inbound"])
            call.cancel()
        (outbound,) = [r for r in unpacked(routes, route_pb2.RouteConfiguration) if r.name == "outbound"]
        named = {
            name
            for host in outbound.virtual_hosts
            for route in host.routes
            for name in [route.route.cluster, *(w.name for w in route.route.weighted_clusters.clusters)]
            if name
        }
        return (
            {c.name for c in unpacked(clusters, cluster_pb2.Cluster)},
            {a.cluster_name for a in unpacked(endpoints, endpoint_pb2.ClusterLoadAssignment)},
            {h.name for h in outbound.virtual_hosts} - {"refused"},
            named,
        )

    async def main() -> tuple[View, View]:
        await served(controller)
        return await view(BOOKTHIEF), await view(BOOKBUYER)

    thief, buyer = asyncio.run(main())
    rss.stop("reading the mesh")
    assert thief == (set(), set(), set(), set())
    bookstore = set(every_eds[:3])
    assert buyer[:3] == (bookstore, bookstore, bookstore)
    assert buyer[3] and buyer[3] <= bookstore
