"""The injection webhook behind a real kube-apiserver: pods of a labelled namespace are injected,
an opted-out pod and kube-system are not, a pod opted in elsewhere is; a real Envoy accepts the
injected bootstrap."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gitmesh.certs import ca, store
from gitmesh.certs.authority import advance, begin_rotation
from gitmesh.controller.inject import InjectWebhook, bundle_writer
from gitmesh.inject import patch, webhook
from gitmesh.kube.client import Client
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


def bundle_roots(cluster: Cluster) -> list[str]:
    config = json.loads(
        cluster.kubectl("get", "mutatingwebhookconfiguration", webhook.NAME, "-o", "json").stdout
    )
    bundles = {base64.b64decode(w["clientConfig"]["caBundle"]).decode() for w in config["webhooks"]}
    assert len(bundles) == 1, "both webhooks trust the same roots"
    return [
        c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(bundles.pop().encode())
    ]


def fingerprint(authority: ca.Authority) -> str:
    return x509.load_pem_x509_certificate(authority.cert_pem.encode()).fingerprint(hashes.SHA256()).hex()


def test_the_controller_keeps_the_ca_bundle_and_its_certificate_through_a_root_rotation(
    add_kube_cluster: Any, tmp_path: Path
) -> None:
    cluster = add_kube_cluster()
    keeper = store.FileKeeper(tmp_path / "ca.json")
    stopping = threading.Event()
    served = InjectWebhook(
        ("127.0.0.1", 0),
        CONFIG,
        keeper,
        bundle_writer(Client.connect(str(cluster.kubeconfig))),
        stopping,
        server_name="127.0.0.1",
    )
    # As gitmesh install writes it: no caBundle; the controller adds it.
    registration = webhook.configuration({"url": f"https://127.0.0.1:{served.server.port}"})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(registration))
    namespace(cluster, "meshed", {patch.INJECT: "enabled"})
    served.start()
    try:
        served.check()
        first = keeper.load()
        assert first is not None
        assert bundle_roots(cluster) == [fingerprint(first.authorities[0])]
        assert init_names(create_pod(cluster, "meshed", "before")) == [patch.INIT_NAME, patch.PROXY_NAME]

        now = datetime.datetime.now(datetime.UTC)
        steps = [begin_rotation(first, ca.new_root(first.trust_domain, now))]
        steps += [advance(steps[0]), advance(advance(steps[0]))]
        for number, state in enumerate(steps):
            keeper.save(state)
            served.check()
            assert bundle_roots(cluster) == [fingerprint(a) for a in state.authorities]
            pod = create_pod(cluster, "meshed", f"rotation-{number}")
            assert init_names(pod) == [patch.INIT_NAME, patch.PROXY_NAME], state.phase
        assert bundle_roots(cluster) == [fingerprint(steps[0].authorities[1])]  # the old root is gone
    finally:
        served.stop()
        cluster.stop()
