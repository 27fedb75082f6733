"""`gitmesh run` serving a real cluster's mesh: it watches the apiserver and follows every change."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from click.testing import CliRunner
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from gitmesh.certs import ca
from gitmesh.cli import cli
from gitmesh.demo import eventually, free_port, stop_process
from gitmesh.mesh.state import Identity
from gitmesh.settings import kubernetes
from gitmesh.xds import resources
from tests import bookstore
from tests import factory as f
from tests.conftest import GitRepo
from tests.integration.test_grpc_xds import endpoints, grpc_service
from tests.kube import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(crd_cluster: Cluster) -> Cluster:
    return crd_cluster


@pytest.fixture
def gitmesh_run(cluster: Cluster, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with (tmp_path / "gitmesh-run.log").open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitmesh",
                "run",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--xds-address",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        eventually(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None,
            bool,
            "gitmesh run listening",
        )
        yield port
    finally:
        stop_process(process)
        print((tmp_path / "gitmesh-run.log").read_text()[-3000:])


def split_weights(xds_port: int, kubeconfig: Path) -> dict[str, int]:
    """Ask gitmesh run, as a proxy would (over mTLS, with a certificate from the CA it keeps in the
    cluster), for the outbound routes; the greeter's weighted clusters."""
    ca_state = kubernetes(str(kubeconfig), None).state.ca.load()
    assert ca_state is not None
    issued = ca.issue(
        ca_state.signing, ca_state.trust_domain, Identity("app", "probe"), datetime.datetime.now(datetime.UTC)
    )
    credentials = grpc.ssl_channel_credentials(
        "".join(ca_state.bundle()).encode(), issued.key_pem.encode(), issued.cert_pem.encode()
    )
    node = base_pb2.Node(id=f"probe-{time.monotonic_ns()}")
    node.metadata.update(
        {
            "namespace": "app",
            "service_account": "probe",
            "service": "probe",
            "service_namespace": "app",
            "app_port": 1,
            "outbound_port": 2,
            "inbound_port": 3,
        }
    )
    request = discovery_pb2.DiscoveryRequest(node=node, type_url=resources.ROUTE, resource_names=["outbound"])
    with grpc.secure_channel(f"127.0.0.1:{xds_port}", credentials) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        response = next(iter(stub.StreamAggregatedResources(iter([request]), timeout=10)))
    for packed in response.resources:
        routes = route_pb2.RouteConfiguration()
        packed.Unpack(routes)
        for host in routes.virtual_hosts:
            if host.name == "app/greeter|50051":
                action = host.routes[0].route
                return {c.name: c.weight.value for c in action.weighted_clusters.clusters}
    return {}


def test_the_mesh_follows_the_cluster(cluster: Cluster, gitmesh_run: int, git_repo: GitRepo) -> None:
    # The apiserver refuses loopback endpoints, and nothing here sends traffic: a documentation
    # address (TEST-NET-1, never routed) stands in for the pods.
    objects = [
        f.namespace("app"),
        grpc_service("greeter"),
        grpc_service("greeter-v1"),
        grpc_service("greeter-v2"),
        endpoints("greeter-v1", 50051, "192.0.2.10"),
        endpoints("greeter-v2", 50051, "192.0.2.11"),
        f.split("app", "greeter-split", "greeter", {"greeter-v1": 80, "greeter-v2": 20}),
        # The probe is sent only what its identity may call: the greeters' namespace.
        f.route_group("app", "greeter-routes", {"name": "/gitmesh.test.Greeter/Name"}),
        f.target("app", "probe-calls-greeter", "greeter", ["app/probe"], "greeter-routes"),
    ]
    git_repo.commit("greeter", {"mesh/greeter.yaml": yaml.safe_dump_all(objects)})
    applied = CliRunner().invoke(
        cli,
        ["apply", "--repo", str(git_repo.path), "--path", "mesh", "--kubeconfig", str(cluster.kubeconfig)],
    )
    assert applied.exit_code == 0, applied.output
    # gitmesh run was already watching: the objects it did not have at start are served.
    weights = {"app/greeter-v1|50051": 80, "app/greeter-v2|50051": 20}
    eventually(
        lambda: split_weights(gitmesh_run, cluster.kubeconfig),
        lambda w: w == weights,
        "the 80/20 split served",
    )
    # A change made in the cluster itself (not through gitmesh) is followed too.
    cluster.kubectl(
        "patch",
        "trafficsplit",
        "-n",
        "app",
        "greeter-split",
        "--type=merge",
        "-p",
        '{"spec":{"backends":[{"service":"greeter-v1","weight":0},{"service":"greeter-v2","weight":1}]}}',
    )
    weights = {"app/greeter-v1|50051": 0, "app/greeter-v2|50051": 1}
    eventually(
        lambda: split_weights(gitmesh_run, cluster.kubeconfig), lambda w: w == weights, "the 0/1 split served"
    )
    # What gitmesh run saw of its proxies is kept in the cluster, for gitmesh status.
    status = CliRunner().invoke(cli, ["status", "--kubeconfig", str(cluster.kubeconfig), "--output", "json"])
    sidecars = json.loads(status.output)["sidecars"]
    assert "proxies" in sidecars
    assert "gitmesh-system/gitmesh" in sidecars["certificates"]  # the xDS server's own certificate
    # The mesh CA lives in a Secret beside gitmesh's inventories, as kubectl sees it.
    secret = json.loads(
        cluster.kubectl("get", "secret", "-n", "gitmesh-system", "gitmesh-ca", "-o", "json").stdout
    )
    assert set(secret["data"]) == {"ca.json"}


def test_traffic_flows_through_a_mesh_served_from_the_cluster(
    cluster: Cluster, pod_address: str, tmp_path: Path
) -> None:
    with bookstore.running(tmp_path, kubeconfig=cluster.kubeconfig, host=pod_address) as d:
        slices = cluster.kubectl("get", "endpointslices", "-n", "bookstore", "-o", "json").stdout
        assert pod_address in slices  # the cluster holds what the sidecars are reached by
        seen = d.shares(500)
        assert abs(seen.get("bookstore-v1", 0) - 0.75) <= 0.07, seen
        assert d.buy("/admin")[0] == 403
        assert d.buy(caller="bookthief")[0] == 403  # may call nothing: its sidecar refuses
        assert d.query("bookwarehouse") in ("mysql-v1", "mysql-v2")
        assert d.query("bookthief") == ""
        # A change made in the cluster itself reaches the traffic.
        cluster.kubectl(
            "patch",
            "trafficsplit",
            "-n",
            "bookstore",
            "bookstore-split",
            "--type=merge",
            "-p",
            '{"spec":{"backends":[{"service":"bookstore-v1","weight":0},{"service":"bookstore-v2","weight":1}]}}',
        )
        eventually(lambda: set(d.shares(50)), lambda s: s == {"bookstore-v2"}, "0/1 served from the cluster")
