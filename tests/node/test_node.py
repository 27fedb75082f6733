"""The test node is a working Kubernetes node: pods run, talk to each other, to Services by
ClusterIP and by DNS name, kubectl exec and logs reach them, Envoy and gitmesh run in it, and
teardown leaves nothing on the host.

gitmesh installed into the node is here too, so that every test of the node runs on one xdist
worker (one file each): the last test tears the session's node down; keep it last.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, struct_pb2

from gitmesh import demo
from gitmesh.certs import ca, certmanager, store
from gitmesh.cli import cli
from gitmesh.cli.inject import fetch_identity
from gitmesh.controller.leader import LEASE, LEASE_DURATION, RETRY_PERIOD
from gitmesh.install.manifests import INJECT_PORT, XDS_PORT
from gitmesh.install.manifests import NAMESPACE as INSTALL_NAMESPACE
from gitmesh.mesh.state import Identity
from gitmesh.metrics import envoy, model
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import client_tls
from tests import cert_manager, pod_bookstore
from tests import factory as f
from tests.bookstore import Bookstore
from tests.conftest import GitRepo
from tests.gitserver import GitHttpServer
from tests.node import (
    CLUSTER_DOMAIN,
    DNS_SERVICE_IP,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    NodeCluster,
    NodeError,
    node_components,
    node_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.node]

NAMESPACE = "node-test"
APP_PORT = 8080
ENVOY_PORT = 10000


def _app_container(cluster: NodeCluster, name: str = "app") -> dict[str, Any]:
    return {
        "name": name,
        "image": cluster.images.app,
        "imagePullPolicy": "Never",
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"containerPort": APP_PORT}],
        "readinessProbe": {"httpGet": {"path": "/", "port": APP_PORT}, "periodSeconds": 1},
    }


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        # The app exits on SIGKILL only; a short grace keeps deletes and teardown quick.
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 1, **spec},
    }


def _pod_json(cluster: NodeCluster, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        cluster.kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json").stdout
    )
    return result


def _fetch(cluster: NodeCluster, url: str, pod: str = "client") -> tuple[int, str]:
    """Have ``pod``'s app GET ``url`` (through the apiserver's pod proxy) and return its answer."""
    query = urllib.parse.urlencode({"url": url})
    status, body = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:{APP_PORT}/proxy/fetch?{query}")
    return status, body if isinstance(body, str) else json.dumps(body)


@pytest.fixture(scope="module")
def apps(node_cluster: NodeCluster) -> NodeCluster:
    """Two app pods, ``client`` and ``server``, and a Service ``server`` (port 80) in front of the latter."""
    node_cluster.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            _pod("client", [_app_container(node_cluster)]),
            _pod("server", [_app_container(node_cluster)]),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "server", "namespace": NAMESPACE},
                "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": APP_PORT}]},
            },
        ]
    )
    node_cluster.kubectl(
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "pod/server",
        "--timeout=90s",
        timeout=100,
    )
    node_cluster.wait_for_service(NAMESPACE, "server")
    return node_cluster


def test_the_node_is_ready_with_the_built_kubelet_and_containerd(node_cluster: NodeCluster) -> None:
    status, version = node_cluster.get("/version")
    assert status == 200
    status, body = node_cluster.get(f"/api/v1/nodes/{NODE_NAME}")
    assert status == 200
    ready = [c for c in body["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", body["status"]["conditions"]
    info = body["status"]["nodeInfo"]
    assert info["kubeletVersion"] == version["gitVersion"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    # The controller-manager removed the not-ready taint, so ordinary pods schedule.
    assert not body["spec"].get("taints")


def test_coredns_serves_the_cluster_dns_at_its_fixed_address(node_cluster: NodeCluster) -> None:
    service = json.loads(
        node_cluster.kubectl("-n", "kube-system", "get", "service", "kube-dns", "-o", "json").stdout
    )
    assert service["spec"]["clusterIP"] == DNS_SERVICE_IP
    pods = json.loads(
        node_cluster.kubectl(
            "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "json"
        ).stdout
    )["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert pods[0]["spec"]["containers"][0]["image"] == node_cluster.images.coredns


def test_a_pod_of_the_test_app_reaches_running(apps: NodeCluster) -> None:
    pod = _pod_json(apps, "server")
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POD_CIDR)
    assert [c["ready"] for c in pod["status"]["containerStatuses"]] == [True]


def test_pod_to_pod_traffic(apps: NodeCluster) -> None:
    server_ip = _pod_json(apps, "server")["status"]["podIP"]
    assert _fetch(apps, f"http://{server_ip}:{APP_PORT}/") == (200, "200 hello from server\n")


def test_pod_to_service_cluster_ip_traffic(apps: NodeCluster) -> None:
    service = json.loads(apps.kubectl("-n", NAMESPACE, "get", "service", "server", "-o", "json").stdout)
    cluster_ip = service["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network("10.96.0.0/16")
    assert _fetch(apps, f"http://{cluster_ip}/") == (200, "200 hello from server\n")


@pytest.mark.parametrize(
    "name",
    ["server", f"server.{NAMESPACE}", f"server.{NAMESPACE}.svc", f"server.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"],
)
def test_pod_to_service_by_dns_name(apps: NodeCluster, name: str) -> None:
    assert _fetch(apps, f"http://{name}/") == (200, "200 hello from server\n")


def test_a_name_the_cluster_dns_does_not_know_does_not_resolve(apps: NodeCluster) -> None:
    status, body = _fetch(apps, f"http://absent.{NAMESPACE}.svc.{CLUSTER_DOMAIN}/")
    assert status == 502
    assert "no such host" in body


def test_kubectl_exec_and_logs(apps: NodeCluster) -> None:
    # The image has no shell: the app binary is its own client.
    exec_result = apps.kubectl("-n", NAMESPACE, "exec", "client", "--", "/app", "get", "http://server/")
    assert exec_result.stdout == "200 hello from server\n"
    logs = apps.kubectl("-n", NAMESPACE, "logs", "server").stdout
    assert "listening on :8080" in logs
    assert "GET / from" in logs


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


_TYPES = "type.googleapis.com/envoy.extensions.filters"
# Every request gets "x-via: envoy", which the app echoes.
_HTTP_CONNECTION_MANAGER = {
    "@type": f"{_TYPES}.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "ingress",
    "route_config": {
        "virtual_hosts": [
            {
                "name": "app",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                "request_headers_to_add": [{"header": {"key": "x-via", "value": "envoy"}}],
            }
        ]
    },
    "http_filters": [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{_TYPES}.http.router.v3.Router"}}
    ],
}
# Envoy in front of the app in the same pod.
ENVOY_CONFIG = {
    "static_resources": {
        "listeners": [
            {
                "name": "ingress",
                "address": _socket("0.0.0.0", ENVOY_PORT),
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": _HTTP_CONNECTION_MANAGER,
                            }
                        ]
                    }
                ],
            }
        ],
        "clusters": [
            {
                "name": "app",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": "app",
                    "endpoints": [
                        {"lb_endpoints": [{"endpoint": {"address": _socket("127.0.0.1", APP_PORT)}}]}
                    ],
                },
            }
        ],
    }
}


def test_an_envoy_pod_serves_traffic(apps: NodeCluster) -> None:
    envoy = {
        "name": "envoy",
        "image": apps.images.envoy,
        "imagePullPolicy": "Never",
        "args": ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart", "--log-level", "warn"],
        "ports": [{"containerPort": ENVOY_PORT}],
        "readinessProbe": {"tcpSocket": {"port": ENVOY_PORT}, "periodSeconds": 1},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/envoy"}],
    }
    apps.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "envoy", "namespace": NAMESPACE},
                "data": {"envoy.yaml": yaml.safe_dump(ENVOY_CONFIG)},
            },
            _pod(
                "envoy",
                [_app_container(apps), envoy],
                volumes=[{"name": "config", "configMap": {"name": "envoy"}}],
            ),
        ]
    )
    apps.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/envoy", "--timeout=90s", timeout=100)
    pod_ip = _pod_json(apps, "envoy")["status"]["podIP"]
    assert _fetch(apps, f"http://{pod_ip}:{ENVOY_PORT}/") == (200, "200 hello from envoy\nvia envoy\n")
    # Straight to the app, past Envoy, nothing adds the header: it came from Envoy above.
    assert _fetch(apps, f"http://{pod_ip}:{APP_PORT}/") == (200, "200 hello from envoy\n")


def test_the_gitmesh_image_runs_gitmesh_and_git(apps: NodeCluster) -> None:
    probe = "import git, gitmesh.cli; print('git', '.'.join(map(str, git.Git().version_info)))"
    apps.apply(
        [
            _pod(
                "gitmesh",
                [
                    {
                        "name": "cli",
                        "image": apps.images.gitmesh,
                        "imagePullPolicy": "Never",
                        "args": ["--help"],
                    },
                    {
                        "name": "git",
                        "image": apps.images.gitmesh,
                        "imagePullPolicy": "Never",
                        "command": ["/opt/venv/bin/python", "-c", probe],
                    },
                ],
                restartPolicy="Never",
            )
        ]
    )
    apps.kubectl(
        "-n",
        NAMESPACE,
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/gitmesh",
        "--timeout=90s",
        timeout=100,
    )
    assert "Usage:" in apps.kubectl("-n", NAMESPACE, "logs", "gitmesh", "-c", "cli").stdout
    assert apps.kubectl("-n", NAMESPACE, "logs", "gitmesh", "-c", "git").stdout.startswith("git 2.")


def test_a_second_up_reuses_the_running_node(node_cluster: NodeCluster) -> None:
    # The components, not every process: pods run git and the like and those come and go.
    before = node_components(node_cluster.directory)
    assert {"etcd", "kube-apiserver", "containerd", "kubelet"} <= before.keys()
    again = node_up(node_cluster.directory)
    assert not again.owned
    assert again.server == node_cluster.server
    assert again.kubeconfig == node_cluster.kubeconfig
    assert node_components(node_cluster.directory) == before


def test_a_node_in_another_folder_is_refused_while_one_runs(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    with pytest.raises(NodeError, match="there is room for one") as refused:
        node_up(tmp_path / "other")
    assert f"GITMESH_NODE_DIR={node_cluster.directory} testenv/down" in str(refused.value)
    assert not (tmp_path / "other").exists()


# --- gitmesh installed into the node (before the teardown test, which must come last) ---
SHOP = "shop"


def get_json(cluster: NodeCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", "-o", "json", "--show-managed-fields", *args).stdout)


def wait_for(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.5)


def holder(cluster: NodeCluster) -> str:
    result = cluster.kubectl("-n", INSTALL_NAMESPACE, "get", "lease", LEASE, "-o", "json", check=False)
    return str(json.loads(result.stdout)["spec"].get("holderIdentity", "")) if result.returncode == 0 else ""


def ready_endpoints(cluster: NodeCluster, service: str) -> set[str]:
    """The ready pods behind ``service`` in gitmesh-system."""
    slices = get_json(
        cluster, "-n", INSTALL_NAMESPACE, "endpointslices", "-l", f"kubernetes.io/service-name={service}"
    )
    return {
        e["targetRef"]["name"]
        for s in slices["items"]
        for e in s.get("endpoints") or ()
        if e.get("conditions", {}).get("ready")
    }


def gitmesh_pods(cluster: NodeCluster) -> dict[str, dict[str, Any]]:
    pods = get_json(cluster, "-n", INSTALL_NAMESPACE, "pods", "-l", "app.kubernetes.io/name=gitmesh")["items"]
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def split_weights(cluster: NodeCluster) -> dict[str, int]:
    result = cluster.kubectl("-n", SHOP, "get", "trafficsplit", "web", "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    return {b["service"]: b["weight"] for b in json.loads(result.stdout)["spec"]["backends"]}


def mesh_files(v1: int, v2: int) -> dict[str, str]:
    return {
        "mesh/shop.yaml": f.dump(
            f.namespace(SHOP),
            f.service(SHOP, "web"),
            f.service(SHOP, "web-v1"),
            f.service(SHOP, "web-v2"),
            f.split(SHOP, "web", "web", {"web-v1": v1, "web-v2": v2}),
        )
    }


@pytest.fixture
def installed(
    node_cluster: NodeCluster, git_repo: GitRepo, tmp_path: Path
) -> Iterator[tuple[NodeCluster, GitRepo, list[str]]]:
    """gitmesh installed from the locally built image, following a repository the pods fetch
    from this host's git http-backend at the node's address; uninstalled afterwards."""
    git_repo.commit("shop", mesh_files(90, 10))
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(git_repo.path), str(served / "mesh.git")], check=True)
    git_repo.git("remote", "add", "origin", str(served / "mesh.git"))
    server = GitHttpServer(served, host=NODE_IP).start()
    kubeconfig = str(node_cluster.kubeconfig)
    install = [
        "install",
        "--kubeconfig",
        kubeconfig,
        "--image",
        node_cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--repo",
        server.url("mesh.git"),
        "--branch",
        "main",
        "--path",
        "mesh",
        "--interval",
        "2s",
    ]
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, (
            result.output
            + node_cluster.kubectl("-n", INSTALL_NAMESPACE, "describe", "pods", check=False).stdout
        )
        yield node_cluster, git_repo, install
    finally:
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", kubeconfig])
        # Uninstall keeps the namespace while it holds the mesh CA; the next test installs anew.
        node_cluster.kubectl(
            "delete",
            "namespace",
            "shop",
            INSTALL_NAMESPACE,
            "--ignore-not-found",
            "--timeout=120s",
            timeout=130,
        )
        server.stop()


def test_install_two_replicas_the_leader_applies_and_a_killed_leader_is_replaced(
    installed: tuple[NodeCluster, GitRepo, list[str]],
) -> None:
    cluster, repo, _ = installed
    deployment = get_json(cluster, "-n", INSTALL_NAMESPACE, "deployment", "gitmesh")
    assert deployment["status"]["readyReplicas"] == 2
    pods = {
        p["metadata"]["name"]
        for p in get_json(cluster, "-n", INSTALL_NAMESPACE, "pods", "-l", "app.kubernetes.io/name=gitmesh")[
            "items"
        ]
    }
    assert len(pods) == 2

    leader = wait_for("a replica holds the Lease", lambda: holder(cluster), 30)
    assert leader in pods
    assert wait_for("the leader applies the TrafficSplit", lambda: split_weights(cluster), 60) == {
        "web-v1": 90,
        "web-v2": 10,
    }
    assert wait_for(
        "the leader's Service selects the leader",
        lambda: ready_endpoints(cluster, "gitmesh-leader") == {leader},
        30,
    )
    services = {
        name: get_json(cluster, "-n", SHOP, "service", name)["metadata"]["resourceVersion"]
        for name in ("web", "web-v1", "web-v2")
    }

    cluster.kubectl("-n", INSTALL_NAMESPACE, "delete", "pod", leader, "--grace-period=0", "--force")
    killed_at = time.monotonic()
    # The other replica or the leader's replacement (they race by a retry period): one of them, once.
    new_leader = wait_for(
        "another replica takes the Lease",
        lambda: (h := holder(cluster)) != leader and h,
        LEASE_DURATION + RETRY_PERIOD * 3,
    )
    assert new_leader.startswith("gitmesh-")
    assert time.monotonic() - killed_at <= LEASE_DURATION + RETRY_PERIOD * 3
    lease = get_json(cluster, "-n", INSTALL_NAMESPACE, "lease", LEASE)
    assert lease["spec"]["leaseTransitions"] == 1
    assert wait_for(
        "the leader's Service follows", lambda: ready_endpoints(cluster, "gitmesh-leader") == {new_leader}, 30
    )

    repo.commit("shift", mesh_files(50, 50))
    repo.git("push", "-q", "origin", "main")
    assert wait_for(
        "the new leader applies the next commit",
        lambda: split_weights(cluster) == {"web-v1": 50, "web-v2": 50},
        60,
    )

    # Applied once per change, by one field manager: the Services the commit left alone were not
    # written again by the new leader, and the split changed exactly once after it was made.
    split = get_json(cluster, "-n", SHOP, "trafficsplit", "web")
    assert split["metadata"]["generation"] == 2
    managers = [(m["manager"], m["operation"]) for m in split["metadata"]["managedFields"]]
    assert managers == [("gitmesh", "Apply")]
    for name, version in services.items():
        assert get_json(cluster, "-n", SHOP, "service", name)["metadata"]["resourceVersion"] == version, name


def test_install_over_an_install_rolls_one_pod_at_a_time_and_the_new_leader_applies(
    installed: tuple[NodeCluster, GitRepo, list[str]],
) -> None:
    cluster, repo, install = installed
    old = set(gitmesh_pods(cluster))
    assert wait_for("the leader applies the TrafficSplit", lambda: split_weights(cluster), 60)
    ready: list[int] = []
    rolled = threading.Event()

    def watch() -> None:
        while not rolled.is_set():
            ready.append(len(ready_endpoints(cluster, "gitmesh")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # A new configuration (another interval) is an upgrade: the pods are replaced.
        result = CliRunner().invoke(cli, [*install[:-1], "3s"])
    finally:
        rolled.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    pods = gitmesh_pods(cluster)
    assert len(pods) == 2 and not set(pods) & old
    # maxUnavailable 0: at every look during the roll, a replica was ready to serve xDS.
    assert len(ready) > 5 and min(ready) >= 1, ready
    config = get_json(cluster, "-n", INSTALL_NAMESPACE, "configmap", "gitmesh")["data"]["config.yaml"]
    assert "interval: 3s" in config
    leader = wait_for(
        "a new pod holds the Lease", lambda: (h := holder(cluster)) in pods and h, LEASE_DURATION * 2
    )
    assert wait_for(
        "the gitmesh-leader Service follows",
        lambda: ready_endpoints(cluster, "gitmesh-leader") == {leader},
        30,
    )
    repo.commit("shift", mesh_files(20, 80))
    repo.git("push", "-q", "origin", "main")
    assert wait_for(
        "the new leader applies the next commit",
        lambda: split_weights(cluster) == {"web-v1": 20, "web-v2": 80},
        60,
    )


class Forwarder:
    """127.0.0.1:port to ``target``, a connection for each: what a pod's sidecar reaches the
    gitmesh Service through (kube-proxy picks a ready replica for each new connection)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(a, b))
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept under way
        self.threads[0].join()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for thread in self.threads[1:]:
            thread.join()


def test_an_upgrade_under_traffic_fails_no_request_and_the_sidecars_follow_the_new_replicas(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    cluster = node_cluster
    d = Bookstore(tmp_path / "demo", kubeconfig=cluster.kubeconfig, host=NODE_IP)
    d._make_repo()
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(d.repo), str(served / "mesh.git")], check=True)
    server = GitHttpServer(served, host=NODE_IP).start()
    install = [
        "install",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--image",
        cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--repo",
        server.url("mesh.git"),
        "--path",
        demo.MESH_PATH,
        "--interval",
        "2s",
    ]
    forwarder = None
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, result.output
        wait_for(
            "the leader applies the bookstore",
            lambda: (
                cluster.kubectl(
                    "-n", "bookstore", "get", "trafficsplit", "bookstore-split", check=False
                ).returncode
                == 0
            ),
            60,
        )
        service_ip = get_json(cluster, "-n", INSTALL_NAMESPACE, "service", "gitmesh")["spec"]["clusterIP"]
        forwarder = Forwarder((service_ip, XDS_PORT))
        ca_state = store.load_or_create(d.ca_keeper(), datetime.now(UTC))
        for name in ("bookbuyer", "bookstore-v1", "bookstore-v2"):
            proxy = d.proxies[name]
            tls = client_tls(ca_state, proxy.identity, datetime.now(UTC))
            d.sidecars[name] = demo.Sidecar(proxy, forwarder.port, d.workdir, tls)
        for name, sidecar in d.sidecars.items():
            demo.eventually(sidecar.ready, bool, f"the {name} sidecar becoming ready", 60)
        assert set(d.shares(100)) == {"bookstore-v1", "bookstore-v2"}

        failed: list[tuple[int, str]] = []
        answered = [0]
        rolled = threading.Event()

        def traffic() -> None:
            while not rolled.is_set():
                status, body = d.buy()
                answered[0] += 1
                if status != 200:
                    failed.append((status, body))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            result = CliRunner().invoke(cli, [*install[:-1], "3s"])  # a new configuration: the pods roll
        finally:
            rolled.set()
            sender.join()
        assert result.exit_code == 0, result.output
        assert answered[0] > 100 and failed == [], (answered, failed[:5])

        # The sidecars reconnected to the new replicas: a commit still reaches the traffic.
        split = d.repo / demo.MESH_PATH / "bookstore" / "split.yaml"
        split.write_text(
            split.read_text().replace("weight: 75", "weight: 0").replace("weight: 25", "weight: 100")
        )
        subprocess.run(
            [
                "git",
                "-C",
                str(d.repo),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qam",
                "v2 only",
            ],
            check=True,
        )
        subprocess.run(["git", "-C", str(d.repo), "push", "-q", str(served / "mesh.git"), "main"], check=True)
        demo.eventually(
            lambda: set(d.shares(50)), lambda s: s == {"bookstore-v2"}, "all to v2 after the upgrade", 60
        )
    finally:
        d.close()
        if forwarder is not None:
            forwarder.close()
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
        cluster.kubectl(
            "delete",
            "namespace",
            *sorted({namespace for namespace, _ in demo.APPS.values()}),
            INSTALL_NAMESPACE,
            "--ignore-not-found",
            "--timeout=120s",
            timeout=130,
        )
        server.stop()


# --- the bookstore as injected pods, served by the in-cluster gitmesh ---
def _pod_node(pod: dict[str, Any], account: str) -> base_pb2.Node:
    """What an injected sidecar of ``pod`` says of itself, claiming ServiceAccount ``account``."""
    meta = pod["metadata"]
    metadata = {
        "pod_name": meta["name"],
        "pod_namespace": meta["namespace"],
        "pod_uid": meta["uid"],
        "pod_ip": pod["status"]["podIP"],
        "service_account": account,
        "inbound_port": 15006,
        "outbound_port": 15001,
    }
    node = base_pb2.Node(id=f"{meta['namespace']}/{meta['name']}")
    node.metadata.CopyFrom(json_format.ParseDict(metadata, struct_pb2.Struct()))
    return node


def _listeners_or_refusal(address: str, bundle: str, held: dict[str, str], node: base_pb2.Node) -> Any:
    """The listeners' names gitmesh's xDS port sends ``node`` on an mTLS stream with the certificate
    ``held``, or the gRPC status it ends the stream with."""
    credentials = grpc.ssl_channel_credentials(
        bundle.encode(), held["key_pem"].encode(), held["cert_pem"].encode()
    )
    answered = threading.Event()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(node=node, type_url=resources.LISTENER)
        answered.wait(20)

    # The server's certificate names the address it listens on (0.0.0.0), besides its SPIFFE ID.
    options = [("grpc.ssl_target_name_override", "0.0.0.0")]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), timeout=20
        )
        try:
            response = next(stream)
        except grpc.RpcError as e:
            return e.code()
        finally:
            answered.set()
        stream.cancel()
    names = []
    for packed in response.resources:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        names.append(listener.name)
    return sorted(names)


@pytest.mark.timeout(480)  # the node's start (about a minute) counts too
def test_the_bookstore_as_injected_pods_talks_mtls_and_follows_the_split_from_git(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    """gitmesh installed with injection applies the bookstore from Git; pods of labelled namespaces
    get their sidecars from the webhook and their certificates for their pods' tokens; bookbuyer
    calls the bookstore by its Service name, and the split, mTLS and access control hold."""
    cluster = node_cluster
    with pod_bookstore.running(cluster, tmp_path) as shop:
        pod = get_json(cluster, "-n", "bookstore", "pod", "bookstore-v1")
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["gitmesh-init", "gitmesh-proxy"]
        # Ready through the rewritten probe: kubelet -> the sidecar's health port -> the app.
        assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 15021
        rules = cluster.kubectl("-n", "bookstore", "logs", "bookstore-v1", "-c", "gitmesh-init").stdout
        assert "-A GITMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006" in rules

        # Routed by the mesh, by the Service's name: split 75/25 between the two versions' pods.
        shares = demo.eventually(
            lambda: shop.shares(40),
            lambda s: set(s) == {"bookstore-v1", "bookstore-v2"},
            "bookbuyer reaching both versions through its sidecar",
            90,
        )
        assert shares["bookstore-v1"] > shares["bookstore-v2"], shares
        # A Job's app starts once its sidecar is configured, calls through the mesh, and the Job
        # completes with its app (the native sidecar does not keep it running).
        job_pod = pod_bookstore.book_pod(cluster, "job", "bookbuyer", "bookbuyer", {}, APP_PORT)
        app = job_pod["spec"]["containers"][0]
        app["args"] = ["get", f"{pod_bookstore.BOOKSTORE}/buy-a-book/new"]
        del app["readinessProbe"]
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "buyer-job", "namespace": "bookbuyer"},
            "spec": {"backoffLimit": 0, "template": {"spec": {**job_pod["spec"], "restartPolicy": "Never"}}},
        }
        cluster.apply([job])
        done = cluster.kubectl(
            "-n",
            "bookbuyer",
            "wait",
            "--for=condition=Complete",
            "job/buyer-job",
            "--timeout=90s",
            timeout=100,
            check=False,
        )
        logs = cluster.kubectl("-n", "bookbuyer", "logs", "job/buyer-job", "-c", "app", check=False).stdout
        assert done.returncode == 0 and logs.startswith("200 hello from bookstore-v"), (done.stderr, logs)
        # Access control on the callee's sidecar: a route no HTTPRouteGroup match allows.
        assert shop.buy(f"{pod_bookstore.BOOKSTORE}/admin")[1].startswith("403 ")
        # bookthief, in the mesh but named by no TrafficTarget, is given no route to the bookstore:
        # its own sidecar refuses the call (403: no mesh route, no Egress).
        status, body = shop.buy(f"{pod_bookstore.BOOKSTORE}/buy-a-book/new", "bookthief")
        assert body.startswith("403 "), (status, body)
        # The sidecars' stats, read as rollouts, top and the console read them: at the address each
        # sidecar reports (its pod's health port), from outside the pod.
        admins = {
            f"{get_json(cluster, '-n', name, 'pod', name)['status']['podIP']}:15021": f"{name}/{name}"
            for name in ("bookbuyer", "bookthief")
        }
        edges = model.window(envoy.EnvoyStats(lambda: admins).read(), None)
        assert edges[("bookbuyer/bookbuyer", "bookstore/bookstore-v1")].requests >= 20, edges
        assert edges[("bookbuyer/bookbuyer", "bookstore/bookstore-v2")].requests >= 1, edges
        assert edges[("bookthief/bookthief", "bookstore/bookstore")].denied >= 1, edges
        # TCP by ClusterIP and port, split 90/10 by connection.
        tcp = demo.eventually(
            lambda: shop.tcp_answers(10),
            lambda s: set(s) <= {"mysql-v1", "mysql-v2"},
            "bookwarehouse reaching mysql through its sidecar",
            60,
        )
        assert tcp.get("mysql-v1", 0) >= 5, tcp
        # mTLS only: plaintext straight to a bookstore pod's address gets no answer from its app.
        v1_ip = pod["status"]["podIP"]
        status, body = shop.buy(f"http://{v1_ip}:{pod_bookstore.BOOK_PORT}/buy-a-book/new")
        assert "hello from" not in body, (status, body)

        # Pod identity, from the host: a token bound to the bookbuyer pod gets bookbuyer's certificate
        # and no other; with it, a node naming bookbuyer's pod is served, one naming a bookstore pod
        # (as bookstore, or as bookbuyer) is refused.
        buyer = get_json(cluster, "-n", "bookbuyer", "pod", "bookbuyer")
        token = cluster.kubectl(
            "-n",
            "bookbuyer",
            "create",
            "token",
            "bookbuyer",
            "--audience=gitmesh",
            "--bound-object-kind=Pod",
            "--bound-object-name=bookbuyer",
            f"--bound-object-uid={buyer['metadata']['uid']}",
        ).stdout.strip()
        webhooks = get_json(cluster, "mutatingwebhookconfiguration", "gitmesh-inject")["webhooks"]
        bundle = base64.b64decode(webhooks[0]["clientConfig"]["caBundle"]).decode()
        service_ip = get_json(cluster, "-n", INSTALL_NAMESPACE, "service", "gitmesh")["spec"]["clusterIP"]
        held = fetch_identity(f"https://{service_ip}:{INJECT_PORT}/identity", token, bundle, wait=30)
        trust_domain = ca.DEFAULT_TRUST_DOMAIN
        assert ca.identity_of(held["cert_pem"], trust_domain) == Identity("bookbuyer", "bookbuyer")
        xds = f"{service_ip}:{XDS_PORT}"
        assert "outbound" in _listeners_or_refusal(xds, bundle, held, _pod_node(buyer, "bookbuyer"))
        store_pod = get_json(cluster, "-n", "bookstore", "pod", "bookstore-v1")
        for claim in ("bookstore", "bookbuyer"):
            refusal = _listeners_or_refusal(xds, bundle, held, _pod_node(store_pod, claim))
            assert refusal == grpc.StatusCode.PERMISSION_DENIED, claim

        # A commit moves the traffic, nothing restarted.
        split, mysql = "bookstore/split.yaml", "bookwarehouse/mysql.yaml"
        shop.commit(
            "all to v2, mysql half and half",
            (split, "weight: 75", "weight: 0"),
            (split, "weight: 25", "weight: 100"),
            (mysql, "weight: 90", "weight: 50"),
            (mysql, "weight: 10", "weight: 50"),
        )
        demo.eventually(lambda: shop.shares(20), lambda s: set(s) == {"bookstore-v2"}, "all to v2", 60)
        demo.eventually(
            lambda: shop.tcp_answers(20), lambda s: set(s) == {"mysql-v1", "mysql-v2"}, "mysql 50/50", 60
        )

        # The control plane restarted under pod-to-pod traffic: the leader's pod deleted, its
        # sidecars reconnect to the other replica; not one request fails.
        failed: list[tuple[int, str]] = []
        answered = [0]
        restarted = threading.Event()

        def traffic() -> None:
            while not restarted.is_set():
                status, body = shop.buy(f"{pod_bookstore.BOOKSTORE}/buy-a-book/new")
                answered[0] += 1
                if status != 200 or not body.startswith("200 hello from bookstore-v2"):
                    failed.append((status, body))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(2)
            leader = wait_for("a replica holds the Lease", lambda: holder(cluster), 30)
            cluster.kubectl("-n", INSTALL_NAMESPACE, "delete", "pod", leader, "--wait=true", timeout=90)
            wait_for(
                "two replicas ready again",
                lambda: (
                    get_json(cluster, "-n", INSTALL_NAMESPACE, "deployment", "gitmesh")["status"].get(
                        "readyReplicas"
                    )
                    == 2
                ),
                90,
            )
            time.sleep(3)  # the sidecars' streams settle on the replicas there are now
        finally:
            restarted.set()
            sender.join()
        print(f"gitmesh pod deleted under traffic: {answered[0]} requests, {len(failed)} failed")
        assert answered[0] > 50 and failed == [], (answered, failed[:5])

        for namespace, name in (
            ("bookstore", "bookstore-v1"),
            ("bookstore", "bookstore-v2"),
            ("bookbuyer", "bookbuyer"),
        ):
            statuses = get_json(cluster, "-n", namespace, "pod", name)["status"]
            restarts = [
                s["restartCount"] for s in statuses["initContainerStatuses"] + statuses["containerStatuses"]
            ]
            assert restarts == [0, 0, 0], (name, restarts)


def bookstore_weights(cluster: NodeCluster) -> dict[str, int]:
    split = get_json(cluster, "-n", "bookstore", "trafficsplit", "bookstore-split")
    return {b["service"]: b["weight"] for b in split["spec"]["backends"]}


def rollout_of(cluster: NodeCluster, split: str) -> dict[str, Any]:
    """SPLIT's rollout as ``gitmesh rollout status SPLIT -o json`` shows it from this host ({}: none)."""
    args = ["rollout", "status", split, "--kubeconfig", str(cluster.kubeconfig), "-o", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rollouts: list[dict[str, Any]] = json.loads(result.output)["rollouts"]
    return rollouts[0] if rollouts else {}


@pytest.mark.timeout(480)
def test_a_canary_of_pods_answering_half_500s_is_rolled_back_from_every_replica_s_sidecars(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    """A commit sends bookstore traffic to a v2 whose pod answers every second request with a 500,
    under a rollout policy: the leader steps the split, judges v2 on the callers' sidecars (read
    at their pods, whichever replica each is connected to), and rolls back to v1 by itself."""
    cluster = node_cluster
    with pod_bookstore.running(cluster, tmp_path) as shop:
        split = "bookstore/split.yaml"
        v1, v2 = "- service: bookstore-v1\n    weight: ", "- service: bookstore-v2\n    weight: "
        shop.commit("v1 only", (split, f"{v1}75", f"{v1}100"), (split, f"{v2}25", f"{v2}0"))
        wait_for(
            "v1 only", lambda: bookstore_weights(cluster) == {"bookstore-v1": 100, "bookstore-v2": 0}, 60
        )
        cluster.kubectl("-n", "bookstore", "delete", "pod", "bookstore-v2", "--wait=true", timeout=90)
        bad = pod_bookstore.book_pod(
            cluster,
            "bookstore-v2",
            "bookstore",
            "bookstore",
            {"app": "bookstore", "version": "v2"},
            pod_bookstore.BOOK_PORT,
            env={"ERROR_EVERY": "2"},
        )
        cluster.apply([bad])
        cluster.kubectl(
            "-n",
            "bookstore",
            "wait",
            "--for=condition=Ready",
            "pod/bookstore-v2",
            "--timeout=120s",
            timeout=130,
        )
        # Each replica reports the sidecars connected to it; read back, they are the whole mesh.
        pods = {
            get_json(cluster, "-n", namespace, "pod", name)["status"]["podIP"]
            for name, namespace, *_ in pod_bookstore.PODS
        }

        def whole() -> dict[str, Any] | None:
            status = CliRunner().invoke(
                cli, ["status", "--kubeconfig", str(cluster.kubeconfig), "-o", "json"]
            )
            report = json.loads(status.output)["sidecars"] or {}
            admins = {a.rpartition(":")[0] for a in report.get("sidecars", {})}
            return report if admins == pods and len(report["replicas"]) == 2 else None

        report = wait_for("every sidecar reported by the two replicas", whole, 60)
        assert set(report["replicas"]) == set(gitmesh_pods(cluster)), report["replicas"]

        answers: list[str] = []
        done = threading.Event()

        def traffic() -> None:
            while not done.is_set():
                status, body = shop.buy(f"{pod_bookstore.BOOKSTORE}/buy-a-book/new")
                answers.append(body[:40] if status == 200 else f"{status} {body[:40]}")

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(2)
            policy = "".join(
                f'    rollout.gitmesh.dev/{key}: "{value}"\n'
                for key, value in {
                    "steps": "10,50",
                    "interval": "3s",
                    "success-rate": "95",
                    "min-requests": "5",
                    "failure-threshold": "2",
                    "progress-deadline": "60s",
                }.items()
            )
            revision = shop.commit(
                "bookstore v2, under a rollout policy",
                (split, "  namespace: bookstore\n", f"  namespace: bookstore\n  annotations:\n{policy}"),
                (split, f"{v1}100", f"{v1}0"),
                (split, f"{v2}0", f"{v2}100"),
            )
            ended = wait_for(
                "the rollout's end",
                lambda: (
                    (r := rollout_of(cluster, "bookstore/bookstore-split")).get("phase")
                    in {"Succeeded", "Failed"}
                    and r
                ),
                180,
            )
            # Once the sidecars have the weights it ended on, every answer is v1's.
            wait_for(
                "ten answers in a row from v1",
                lambda: (
                    len(answers) > 10
                    and all(a.startswith("200 hello from bookstore-v1") for a in answers[-10:])
                ),
                30,
            )
        finally:
            done.set()
            sender.join()
        assert ended["phase"] == "Failed", ended
        assert ended["revision"] == revision, ended
        assert "success rate" in ended["reason"] and "below 95%" in ended["reason"], ended["reason"]
        assert ended["weights"] == {"bookstore-v1": 100, "bookstore-v2": 0}, ended
        assert bookstore_weights(cluster) == {"bookstore-v1": 100, "bookstore-v2": 0}
        # v2 had its trial: answers from it, its 500s among them.
        assert any(a.startswith("200 hello from bookstore-v2") for a in answers), answers[-20:]
        assert any(a.startswith("500 bookstore-v2 fails") for a in answers), answers[-20:]
        time.sleep(5)  # a reconcile or two of the same head: the target is not tried again
        assert rollout_of(cluster, "bookstore/bookstore-split")["phase"] == "Failed"
        assert set(shop.shares(20)) == {"bookstore-v1"}


def served_chain(address: str, port: int, authority: ca.Authority, workdir: Path) -> list[x509.Certificate]:
    """The certificate chain a sidecar's inbound listener presents, to a client of identity
    bookbuyer whose certificate ``authority`` signs (``openssl s_client``, from this host)."""
    client = ca.issue(
        authority, ca.DEFAULT_TRUST_DOMAIN, Identity("bookbuyer", "bookbuyer"), datetime.now(UTC)
    )
    (workdir / "client.pem").write_text(client.cert_pem)
    (workdir / "client.key").write_text(client.key_pem)
    shown = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"{address}:{port}", "-showcerts",
            "-cert", str(workdir / "client.pem"), "-key", str(workdir / "client.key"),
        ],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", shown.stdout, re.S)
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


@pytest.mark.timeout(900)  # a cold build of cert-manager (minutes) counts too
def test_cert_manager_in_the_node_issues_the_pods_certificates(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    """cert-manager as pods of the node (its controller, webhook and cainjector), chosen by a
    MeshRootCertificate in the mesh's repository: the in-cluster gitmesh asks it for every pod's
    certificate with CertificateRequests in gitmesh-system, and the pods talk mTLS with them."""
    cluster = node_cluster
    built = cert_manager.build()
    roots: list[ca.Authority] = []
    chooser = yaml.safe_dump(
        {
            "apiVersion": "config.openservicemesh.io/v1alpha2",
            "kind": "MeshRootCertificate",
            "metadata": {"name": "mesh-root", "namespace": INSTALL_NAMESPACE},
            "spec": {
                "trustDomain": ca.DEFAULT_TRUST_DOMAIN,
                "provider": {
                    "certManager": {
                        "issuerName": cert_manager.ISSUER,
                        "issuerKind": "Issuer",
                        "issuerGroup": "cert-manager.io",
                    }
                },
            },
        }
    )
    try:
        with pod_bookstore.running(
            cluster,
            tmp_path / "shop",
            {"mesh-root-certificate.yaml": chooser},
            lambda: roots.append(cert_manager.in_node(built, cluster)),
        ) as shop:
            (root,) = roots
            shares = demo.eventually(
                lambda: shop.shares(20),
                lambda s: set(s) == {"bookstore-v1", "bookstore-v2"},
                "bookbuyer reaching both versions over mTLS",
                90,
            )
            assert sum(shares.values()) == 20
            status = CliRunner().invoke(
                cli, ["status", "--kubeconfig", str(cluster.kubeconfig), "-o", "json"]
            )
            provider = json.loads(status.output)["sidecars"]["certificate_provider"]
            assert provider["name"].startswith("cert-manager") and provider["problem"] is None, provider
            # What bookstore-v1's sidecar presents: a certificate for its ServiceAccount, signed by
            # the Issuer's root (no mesh CA of gitmesh's own between them).
            v1 = get_json(cluster, "-n", "bookstore", "pod", "bookstore-v1")["status"]["podIP"]
            chain = served_chain(v1, pod_bookstore.BOOK_PORT, root, tmp_path)
            assert chain, "no certificate presented"
            root_cert = x509.load_pem_x509_certificate(root.cert_pem.encode())
            chain[0].verify_directly_issued_by(root_cert)
            sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            spiffe = f"spiffe://{ca.DEFAULT_TRUST_DOMAIN}/ns/bookstore/sa/bookstore"
            assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
            # Answered and deleted: no CertificateRequest of gitmesh's is left behind.
            left = cluster.kubectl("-n", INSTALL_NAMESPACE, "get", "certificaterequests", "-o", "name")
            assert left.stdout.strip() == ""
            # Every request above went through cert-manager's webhook (failing closed), whose
            # serving CA cainjector put in both webhook configurations.
            ca_pem = cert_manager.webhook_ca(cluster)
            assert b"BEGIN CERTIFICATE" in ca_pem
            assert cert_manager.webhook_ca_bundles(cluster) == [ca_pem, ca_pem]
            _webhook_checks_certificate_requests(cluster)
    finally:
        cert_manager.remove_from_node(cluster)


def _webhook_checks_certificate_requests(cluster: NodeCluster) -> None:
    """cert-manager's webhook records who asks for a certificate, whatever the request claims, keeps
    that identity, and refuses a request without a CSR: nothing is signed for a wrong identity."""

    def request(name: str, **spec: Any) -> dict[str, Any]:
        csr = certmanager.request_pem("spiffe://x/ns/a/sa/b", ca.workload_key())
        body = {
            "request": base64.b64encode(csr).decode(),
            "issuerRef": {"name": cert_manager.ISSUER, "kind": "Issuer", "group": "cert-manager.io"},
        }
        return {
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": name, "namespace": cert_manager.NAMESPACE},
            "spec": {**body, **spec},
        }

    def create(cr: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("create", "-f", "-", input=json.dumps(cr), check=False)

    me = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    denied = 'admission webhook "webhook.cert-manager.io" denied the request'
    # A request claiming a workload's identity is recorded as the admin's, who sent it; that
    # identity cannot be changed afterwards.
    posing = create(request("posing", username="system:serviceaccount:bookstore:bookstore"))
    assert posing.returncode == 0, posing.stderr
    try:
        shown = get_json(cluster, "-n", cert_manager.NAMESPACE, "certificaterequest", "posing")
        assert me and shown["spec"]["username"] == me
        changed = cluster.kubectl(
            "-n", cert_manager.NAMESPACE, "patch", "certificaterequest", "posing", "--type=merge",
            "-p", '{"spec": {"username": "system:serviceaccount:bookstore:bookstore"}}', check=False,
        )  # fmt: skip
        assert changed.returncode != 0 and denied in changed.stderr, changed.stderr
        assert "username identity cannot be changed" in changed.stderr, changed.stderr
    finally:
        cluster.kubectl("-n", cert_manager.NAMESPACE, "delete", "certificaterequest", "posing")
    empty = create(request("no-csr", request=base64.b64encode(b"not a CSR").decode()))
    assert empty.returncode != 0 and denied in empty.stderr and "spec.request" in empty.stderr, empty.stderr


@pytest.mark.timeout(480)
def test_make_demo_cluster_shows_the_split_access_control_and_a_commit_that_moves_it(
    node_cluster: NodeCluster,
) -> None:
    """What `make demo-cluster` runs, as a person runs it: on the running node, the bookstore as pods."""
    shown = subprocess.run(
        [sys.executable, "-m", "tests.pod_bookstore"],
        env={**os.environ, "GITMESH_NODE_DIR": str(node_cluster.directory)},
        capture_output=True,
        text=True,
        timeout=460,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()

    def line(start: str) -> list[str]:
        return [x for x in lines if x.startswith(start)]

    first, after = line("bookbuyer  -> bookstore (")
    assert "bookstore-v1" in first and "bookstore-v2" in first, first
    assert after.endswith("bookstore-v2 100%"), after
    assert " 403 " in line("bookbuyer  -> bookstore /admin")[0]
    assert " 403 " in line("bookthief  -> bookstore")[0]
    assert "mysql-v1" in line("bookwarehouse -> mysql")[0]
    # It leaves the node running, and nothing of the demo in it.
    assert "kubelet" in node_components(node_cluster.directory)
    namespaces = {n["metadata"]["name"] for n in get_json(node_cluster, "namespaces")["items"]}
    assert namespaces.isdisjoint([*pod_bookstore.NAMESPACES, INSTALL_NAMESPACE]), namespaces
