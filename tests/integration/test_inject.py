"""The injection webhook behind a real kube-apiserver: pods of a labelled namespace are injected,
an opted-out pod and kube-system are not, a pod opted in elsewhere is; a real Envoy accepts the
injected bootstrap."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitmesh.certs import ca
from gitmesh.inject import patch, webhook
from gitmesh.mesh.state import Identity
from tests.kube import Cluster

pytestmark = pytest.mark.integration

CONFIG = patch.Config("localhost/envoy:1", "localhost/gitmesh:dev", "gitmesh.gitmesh-system.svc", 15010)


@pytest.fixture
def registered(add_kube_cluster: Any) -> Iterator[Cluster]:
    """A fresh cluster whose apiserver calls a webhook server of this process over HTTPS."""
    cluster = add_kube_cluster()
    now = datetime.datetime.now(datetime.UTC)
    root = ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now)
    issued = ca.issue(
        root, ca.DEFAULT_TRUST_DOMAIN, Identity("gitmesh-system", "gitmesh"), now, server_name="127.0.0.1"
    )
    server = webhook.WebhookServer(("127.0.0.1", 0), CONFIG, issued)
    server.start()
    config = webhook.configuration({"url": f"https://127.0.0.1:{server.port}"}, root.cert_pem)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        yield cluster
    finally:
        server.stop()
        cluster.stop()


def create_pod(cluster: Cluster, namespace: str, name: str, annotations: dict[str, str] | None = None) -> Any:
    container = {
        "name": "app",
        "image": "localhost/gitmesh-test-app:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
    }
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"containers": [container], "automountServiceAccountToken": False},
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
    return json.loads(cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)


def namespace(cluster: Cluster, name: str, labels: dict[str, str]) -> None:
    obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [obj, sa]})
    )


def init_names(obj: Any) -> list[str]:
    return [c["name"] for c in obj["spec"].get("initContainers", [])]


def test_the_apiserver_injects_pods_of_labelled_namespaces_only(registered: Cluster, tmp_path: Path) -> None:
    namespace(registered, "meshed", {patch.INJECT: "enabled"})
    namespace(registered, "plain", {})
    namespace(registered, "kube-system", {patch.INJECT: "enabled"})  # labelled by mistake: still never

    meshed = create_pod(registered, "meshed", "a")
    assert init_names(meshed) == [patch.INIT_NAME, patch.PROXY_NAME]
    assert meshed["spec"]["initContainers"][1]["restartPolicy"] == "Always"
    assert meshed["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == CONFIG.health_port
    assert meshed["metadata"]["annotations"][patch.INJECTED] == "true"

    assert init_names(create_pod(registered, "meshed", "out", {patch.INJECT: "disabled"})) == []
    assert init_names(create_pod(registered, "plain", "b")) == []
    assert init_names(create_pod(registered, "plain", "in", {patch.INJECT: "enabled"})) == [
        patch.INIT_NAME,
        patch.PROXY_NAME,
    ]
    assert init_names(create_pod(registered, "kube-system", "c")) == []

    refused = registered.kubectl(
        "run",
        "bad",
        "-n",
        "meshed",
        "--image=x",
        f"--annotations={patch.EXCLUDE_OUTBOUND_PORTS}=mysql",
        check=False,
    )
    assert refused.returncode != 0 and patch.EXCLUDE_OUTBOUND_PORTS in refused.stderr

    # The bootstrap as the kubelet will expand it is one a real Envoy accepts.
    proxy = meshed["spec"]["initContainers"][1]
    text = proxy["args"][1]
    for name, value in {
        "POD_NAME": "a",
        "POD_NAMESPACE": "meshed",
        "POD_UID": "u",
        "SERVICE_ACCOUNT": "default",
    }.items():
        text = text.replace(f"$({name})", value)
    envoy = Path(sys.executable).parent / "envoy"
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "--config-yaml", text], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
