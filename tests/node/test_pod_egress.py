"""Egress from an injected pod on the real node: what its app sends outside the mesh is closed by
its sidecar until an Egress names its identity: HTTP by Host, TCP by the address and port it was
sent to (an IP range)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gitmesh import demo
from gitmesh.cli import cli
from gitmesh.install.manifests import NAMESPACE as INSTALL_NAMESPACE
from tests.gitserver import GitHttpServer
from tests.node import NODE_IP, NodeCluster

pytestmark = [pytest.mark.integration, pytest.mark.node]

NAMESPACE = "egress-caller"
APP_PORT = 8080  # the test app's, no mesh port: the API server's pod proxy reaches it
OSM_POLICY = "policy.openservicemesh.io/v1alpha1"


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"external {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def external() -> Iterator[tuple[int, int]]:
    """Two plain HTTP servers on the node's host address, outside the mesh: (for HTTP, for TCP)."""
    servers = [http.server.ThreadingHTTPServer((NODE_IP, 0), _Answer) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def _caller(cluster: NodeCluster) -> dict[str, Any]:
    """The test app as a plain pod of the namespace, injected by the webhook."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "caller", "namespace": NAMESPACE, "labels": {"app": "caller"}},
        "spec": {
            "serviceAccountName": "caller",
            "containers": [
                {
                    "name": "app",
                    "image": cluster.images.app,
                    "imagePullPolicy": "Never",
                    "env": [{"name": "POD_NAME", "value": "caller"}],
                    "ports": [{"containerPort": APP_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": APP_PORT}, "periodSeconds": 1},
                }
            ],
            "terminationGracePeriodSeconds": 1,
        },
    }


def _webhook_ready(cluster: NodeCluster) -> bool:
    found = cluster.kubectl(
        "get", "mutatingwebhookconfiguration", "gitmesh-inject", "-o", "json", check=False
    )
    return found.returncode == 0 and all(
        w["clientConfig"].get("caBundle") for w in json.loads(found.stdout)["webhooks"]
    )


def _fetch(cluster: NodeCluster, url: str) -> tuple[int, str]:
    """The injected pod's app GETs ``url`` (the API server's pod proxy reaches the app past its
    sidecar: 8080 is no mesh port)."""
    query = urllib.parse.urlencode({"url": url})
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/caller:{APP_PORT}/proxy/fetch?{query}"
    status, body = cluster.get(path)
    return status, str(body)


def _commit(repo: Path, served: Path, objects: list[dict[str, Any]], message: str) -> None:
    (repo / demo.MESH_PATH / "mesh.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)
    subprocess.run([*git, "push", "-q", str(served / "mesh.git"), "main"], check=True)


def _eventually_answers(cluster: NodeCluster, url: str, answer: str) -> None:
    got = demo.eventually(lambda: _fetch(cluster, url), lambda r: r == (200, answer), f"{url} answering", 60)
    assert got == (200, answer)


@pytest.mark.timeout(480)  # the node's start (about a minute) counts too
def test_an_injected_pods_external_call_is_refused_until_an_egress_allows_it(
    node_cluster: NodeCluster, external: tuple[int, int], tmp_path: Path
) -> None:
    cluster = node_cluster
    http_port, tcp_port = external
    mesh: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "caller", "namespace": NAMESPACE},
        },
    ]
    repo = tmp_path / "repo"
    (repo / demo.MESH_PATH).mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", "--bare", str(served / "mesh.git")], check=True)
    _commit(repo, served, mesh, "the caller")
    server = GitHttpServer(served, host=NODE_IP).start()
    install = [
        "install",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--image",
        cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--proxy-image",
        cluster.images.envoy,
        "--repo",
        server.url("mesh.git"),
        "--path",
        demo.MESH_PATH,
        "--interval",
        "2s",
    ]
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, result.output
        demo.eventually(
            lambda: (
                cluster.kubectl("get", "serviceaccount", "-n", NAMESPACE, "caller", check=False).returncode
            ),
            lambda code: code == 0,
            "the leader applying the namespace",
            60,
        )
        demo.eventually(
            lambda: _webhook_ready(cluster), bool, "a replica publishing the webhook's caBundle", 30
        )
        cluster.kubectl("label", "namespace", NAMESPACE, "gitmesh.dev/inject=enabled")
        cluster.apply([_caller(cluster)])
        done = cluster.kubectl(
            "-n",
            NAMESPACE,
            "wait",
            "--for=condition=Ready",
            "pod/caller",
            "--timeout=120s",
            timeout=130,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        http_url, tcp_url = (f"http://{NODE_IP}:{port}/" for port in (http_port, tcp_port))

        # No Egress: the sidecar closes both calls (the app sees its GET fail).
        for url in (http_url, tcp_url):
            status, body = _fetch(cluster, url)
            assert "external" not in body, (url, status, body)

        # An Egress for the caller: HTTP to that host (by Host) and TCP to that address range.
        egress = {
            "apiVersion": OSM_POLICY,
            "kind": "Egress",
            "metadata": {"name": "out", "namespace": NAMESPACE},
            "spec": {
                "sources": [{"kind": "ServiceAccount", "name": "caller", "namespace": NAMESPACE}],
                "hosts": [NODE_IP],
                "ports": [{"number": http_port, "protocol": "http"}],
            },
        }
        by_range = {
            **egress,
            "metadata": {"name": "by-range", "namespace": NAMESPACE},
            "spec": {
                "sources": egress["spec"]["sources"],
                "ipAddresses": [f"{NODE_IP}/32"],
                "ports": [{"number": tcp_port, "protocol": "tcp"}],
            },
        }
        _commit(repo, served, [*mesh, egress, by_range], "let the caller out")
        for url, port in ((http_url, http_port), (tcp_url, tcp_port)):
            _eventually_answers(cluster, url, f"200 external {port}")

        # The Egress gone: closed again.
        _commit(repo, served, mesh, "no way out")
        demo.eventually(
            lambda: _fetch(cluster, http_url), lambda r: "external" not in r[1], "egress withdrawn", 60
        )
    finally:
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
        cluster.kubectl(
            "delete",
            "namespace",
            NAMESPACE,
            INSTALL_NAMESPACE,
            "--ignore-not-found",
            "--timeout=120s",
            timeout=130,
        )
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)
