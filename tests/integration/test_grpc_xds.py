"""A second, independent ADS consumer: grpcio's own xDS client (an xds:/// target with
GRPC_XDS_BOOTSTRAP), calling a gRPC service through a TrafficSplit.

Its ADS connection is mTLS like a sidecar's: the bootstrap's ``tls`` channel credentials hold a
certificate for its identity, which the server checks against the node. Its calls to the greeters
are plaintext: gRPC's xDS client takes no certificates over SDS (only from certificate-provider
plugins named in its own bootstrap), so gitmesh sends proxyless clients clusters without TLS. The
greeters here are plain gRPC servers with no sidecar, the only kind of destination such a client
can reach: a sidecar's inbound listener requires a mesh certificate and would refuse it."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitmesh.mesh.state import Identity
from gitmesh.serve import MeshPublisher
from gitmesh.xds.server import serve
from tests import factory as f

pytestmark = pytest.mark.integration

METHOD = "/gitmesh.test.Greeter/Name"

CLIENT = """
import collections, json, sys
import grpc
channel = grpc.insecure_channel("xds:///greeter.app:50051")
name = channel.unary_unary("/gitmesh.test.Greeter/Name")
counts = collections.Counter(name(b"", timeout=10).decode() for _ in range(int(sys.argv[1])))
channel.close()
print(json.dumps(counts))
"""


def greeter(name: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "gitmesh.test.Greeter",
        {"Name": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: name.encode())},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def endpoints(service: str, port: int, address: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": service, "namespace": "app", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port}],
        "endpoints": [{"addresses": [address]}],
    }


def grpc_service(name: str) -> dict[str, Any]:
    svc = f.service("app", name, 50051)
    svc["spec"]["ports"][0].update(name="grpc", appProtocol="grpc")
    return svc


class Control:
    """gitmesh's publisher and ADS server, on an event loop of their own."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.publisher = MeshPublisher()
        self.publisher.update(objects)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # As gitmesh run serves it: mTLS, each node checked against its client certificate.
        self.server = asyncio.run_coroutine_threadsafe(
            serve(
                self.publisher.cache,
                "127.0.0.1:0",
                nodes=self.publisher,
                tls=self.publisher.server_tls("127.0.0.1"),
                authorize=self.publisher.authorize,
            ),
            self.loop,
        ).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def mesh() -> Iterator[tuple[Control, list[dict[str, Any]]]]:
    v1, v1_port = greeter("greeter-v1")
    v2, v2_port = greeter("greeter-v2")
    objects = [
        grpc_service("greeter"),
        grpc_service("greeter-v1"),
        grpc_service("greeter-v2"),
        endpoints("greeter-v1", v1_port),
        endpoints("greeter-v2", v2_port),
        # The client is sent only what its identity may call: the greeters' namespace.
        f.route_group("app", "greeter-routes", {"name": "/gitmesh.test.Greeter/Name"}),
        f.target("app", "client-calls-greeter", "greeter", ["app/client"], "greeter-routes"),
        f.split("app", "greeter-split", "greeter", {"greeter-v1": 80, "greeter-v2": 20}),
    ]
    control = Control(objects)
    try:
        yield control, objects
    finally:
        control.close()
        v1.stop(0)
        v2.stop(0)


def run_client(control: Control, tmp_path: Path, calls: int) -> dict[str, int]:
    """A client of identity app/client, holding a certificate for it from the mesh CA."""
    issued = control.publisher.ca.certificate(Identity("app", "client"), datetime.datetime.now(datetime.UTC))
    files = {
        "cert.pem": issued.cert_pem,
        "key.pem": issued.key_pem,
        "roots.pem": "".join(control.publisher.ca.bundle()),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    bootstrap = tmp_path / "grpc-xds.json"
    node_metadata = {
        "namespace": "app",
        "service_account": "client",
        "service": "client",
        "service_namespace": "app",
        "app_port": 0,
        "outbound_port": 0,
        "inbound_port": 0,
    }
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": f"127.0.0.1:{control.server.port}",
                        "channel_creds": [
                            {
                                "type": "tls",
                                "config": {
                                    "ca_certificate_file": str(tmp_path / "roots.pem"),
                                    "certificate_file": str(tmp_path / "cert.pem"),
                                    "private_key_file": str(tmp_path / "key.pem"),
                                },
                            }
                        ],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "grpc-client", "metadata": node_metadata},
            }
        )
    )
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(calls)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_grpc_xds_client_honours_the_split(
    mesh: tuple[Control, list[dict[str, Any]]], tmp_path: Path
) -> None:
    control, objects = mesh
    counts = run_client(control, tmp_path, 1000)
    assert set(counts) == {"greeter-v1", "greeter-v2"}
    assert abs(counts["greeter-v1"] / 1000 - 0.80) <= 0.05, counts
    # The split moves entirely to v2: a new client sees only v2.
    objects[-1] = f.split("app", "greeter-split", "greeter", {"greeter-v1": 0, "greeter-v2": 1})
    control.publisher.update(objects)
    assert run_client(control, tmp_path, 100) == {"greeter-v2": 100}
