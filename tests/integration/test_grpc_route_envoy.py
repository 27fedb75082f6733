"""A GRPCRoute on the real data path: two versions of a gRPC service (grpcio servers, generic handlers)
behind real Envoy sidecars, a gRPC client behind its own, and gitmesh's ADS server serving them the
route: a method match sends one method to v2, the rest of the service is split 3:1 by weight, and a
service no rule names is refused by the caller's sidecar."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitmesh.demo import Sidecar, eventually, free_port
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.xds.bootstrap import client_tls
from gitmesh.xds.translate import Proxy
from tests import factory as f
from tests.integration.test_grpc_xds import Control

pytestmark = pytest.mark.integration

NS = "greet"
AUTHORITY = f"greeter.{NS}:50051"
ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "GRPCRoute",
    "metadata": {"name": "greeter", "namespace": NS},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "greeter", "port": 50051}],
        "rules": [
            {
                "matches": [{"method": {"service": "gitmesh.test.Greeter", "method": "Version"}}],
                "backendRefs": [{"name": "greeter-v2", "port": 50051}],
            },
            {
                "matches": [{"method": {"service": "gitmesh.test.Greeter"}}],
                "backendRefs": [
                    {"name": "greeter-v1", "port": 50051, "weight": 3},
                    {"name": "greeter-v2", "port": 50051, "weight": 1},
                ],
            },
        ],
    },
}


def greeter(name: str) -> tuple[grpc.Server, int]:
    """A gRPC server of two methods answering its name, one of another service answering too."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    answer = grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: name.encode())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "gitmesh.test.Greeter", {"Hello": answer, "Version": answer}
            ),
            grpc.method_handlers_generic_handler("gitmesh.test.Other", {"Hello": answer}),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def grpc_service(name: str) -> dict[str, Any]:
    svc = f.service(NS, name, 50051)
    svc["spec"]["ports"][0].update(name="grpc", appProtocol="grpc")
    return svc


def endpoints(service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": service, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"]}],
    }


def proxy(service: str, account: str, app_port: int) -> Proxy:
    return Proxy(Identity(NS, account), ServiceRef(NS, service), app_port, free_port(), free_port())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[grpc.Channel]:
    """A channel from the client's app to its sidecar's outbound listener, calling the greeter."""
    servers = {name: greeter(name) for name in ("greeter-v1", "greeter-v2")}
    proxies = {name: proxy(name, "greeter", port) for name, (_, port) in servers.items()}
    proxies["client"] = proxy("client", "client", free_port())
    objects = [
        f.mesh_config(permissive=True),
        f.service_account(NS, "client"),
        f.service_account(NS, "greeter"),
        f.service(NS, "client", 8080),
        *(grpc_service(name) for name in ("greeter", "greeter-v1", "greeter-v2")),
        *(endpoints(name, proxies[name].inbound_port) for name in servers),
        ROUTE,
    ]
    control = Control(objects)
    now = datetime.datetime.now(datetime.UTC)
    xds_port = int(control.server.port)
    sidecars = [
        Sidecar(p, xds_port, tmp_path, client_tls(control.publisher.ca.state, p.identity, now))
        for p in proxies.values()
    ]
    channel = grpc.insecure_channel(
        f"127.0.0.1:{proxies['client'].outbound_port}", options=[("grpc.default_authority", AUTHORITY)]
    )
    try:
        for sidecar in sidecars:
            eventually(sidecar.ready, bool, f"the {sidecar.proxy.service.name} sidecar becoming ready")
        yield channel
    finally:
        channel.close()
        for sidecar in sidecars:
            sidecar.close()
        control.close()
        for server, _ in servers.values():
            server.stop(0)


def call(channel: grpc.Channel, method: str) -> str:
    answer: bytes = channel.unary_unary(method)(b"", timeout=5)
    return answer.decode()


def answered(channel: grpc.Channel) -> str:
    """The answer to a call, or "" while the sidecars are still being configured."""
    try:
        return call(channel, "/gitmesh.test.Greeter/Hello")
    except grpc.RpcError:
        return ""


def test_a_grpc_route_matches_methods_and_splits_by_weight_through_real_sidecars(
    client: grpc.Channel,
) -> None:
    eventually(lambda: answered(client), bool, "a first call through the sidecars")
    assert {call(client, "/gitmesh.test.Greeter/Version") for _ in range(40)} == {"greeter-v2"}
    counts = collections.Counter(call(client, "/gitmesh.test.Greeter/Hello") for _ in range(400))
    assert counts.keys() == {"greeter-v1", "greeter-v2"}
    assert 0.15 < counts["greeter-v2"] / 400 < 0.35  # weight 1 of 4; 3.5 standard deviations either side
    # The greeters serve gitmesh.test.Other, but no rule names it: the caller's sidecar answers 404,
    # which a gRPC client reads as UNIMPLEMENTED.
    with pytest.raises(grpc.RpcError) as refused:
        call(client, "/gitmesh.test.Other/Hello")
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
