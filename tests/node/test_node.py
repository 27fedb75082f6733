"""The test node is a working Kubernetes node: pods run, talk to each other, to Services by
ClusterIP and by DNS name, kubectl exec and logs reach them, Envoy and gitmesh run in it, and
teardown leaves nothing on the host.

The last test tears the session's node down; keep it last.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.node import (
    CLUSTER_DOMAIN,
    DNS_SERVICE_IP,
    NODE_NAME,
    POD_CIDR,
    NodeCluster,
    NodeError,
    leftovers,
    node_processes,
    node_up,
    read_sysctl,
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
    before = node_processes(node_cluster.directory)
    again = node_up(node_cluster.directory)
    assert not again.owned
    assert again.server == node_cluster.server
    assert again.kubeconfig == node_cluster.kubeconfig
    assert node_processes(node_cluster.directory) == before


def test_a_node_in_another_folder_is_refused_while_one_runs(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    with pytest.raises(NodeError, match="there is room for one") as refused:
        node_up(tmp_path / "other")
    assert f"GITMESH_NODE_DIR={node_cluster.directory} testenv/down" in str(refused.value)
    assert not (tmp_path / "other").exists()


def test_teardown_leaves_nothing_behind(node_cluster: NodeCluster) -> None:
    if not node_cluster.owned:
        pytest.skip("the node was started by testenv/up, not by this session; testenv/down removes it")
    state = json.loads((node_cluster.directory / "state.json").read_text())
    assert leftovers(node_cluster.directory)["processes"], "the node's processes should be running before"
    node_cluster.down()
    assert leftovers(node_cluster.directory) == {
        "processes": [],
        "links": [],
        "iptables chains": [],
        "mounts": [],
        "pod log links": [],
        "cgroups": [],
    }
    assert [path for path in state["created_paths"] if Path(path).exists()] == []
    for name, value in state["sysctls"].items():
        assert read_sysctl(name) == value
