"""The injection webhook behind a real kube-apiserver: pods of a labelled namespace are injected,
an opted-out pod and kube-system are not, a pod opted in elsewhere is; a real Envoy accepts the
injected bootstrap."""

from __future__ import annotations

import base64
import datetime
import functools
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
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2

from gitmesh.certs import ca, store
from gitmesh.certs.authority import CaState, MeshCA, advance, begin_rotation
from gitmesh.cli.inject import fetch_identity
from gitmesh.controller.inject import InjectWebhook, PodIdentities, bundle_writer
from gitmesh.errors import GitmeshError
from gitmesh.inject import identity, patch, webhook
from gitmesh.kube import review
from gitmesh.kube.client import Client
from gitmesh.mesh.state import Identity
from gitmesh.serve import MeshPublisher
from gitmesh.xds.bootstrap import SERVER_IDENTITY
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
        "POD_IP": "10.244.0.3",
        "SERVICE_ACCOUNT": "default",
    }.items():
        text = text.replace(f"$({name})", value)
    # What the init container writes: the pod's certificate, its key, the mesh's roots.
    now = datetime.datetime.now(datetime.UTC)
    root = ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now)
    issued = ca.issue(root, ca.DEFAULT_TRUST_DOMAIN, Identity("meshed", "default"), now)
    for name, pem in (
        ("cert.pem", issued.cert_pem),
        ("key.pem", issued.key_pem),
        ("bundle.pem", root.cert_pem),
    ):
        (tmp_path / name).write_text(pem)
    text = text.replace(patch.IDENTITY_DIR, str(tmp_path))
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


# --- pod identity: projected tokens, TokenReview and the pods they are bound to ---


def _pod_with(cluster: Cluster, namespace: str, name: str, account: str, ip: str) -> dict[str, Any]:
    """A pod of ``account`` (no node runs it here), its status saying it is at ``ip``."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "x"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    status = json.dumps({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    cluster.kubectl(
        "-n", namespace, "patch", "pod", name, "--subresource=status", "--type=merge", "-p", status
    )
    created: dict[str, Any] = json.loads(
        cluster.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout
    )
    return created


def _token(cluster: Cluster, namespace: str, account: str, *args: str) -> str:
    return cluster.kubectl("-n", namespace, "create", "token", account, *args).stdout.strip()


def _bound(cluster: Cluster, pod: dict[str, Any], audience: str = identity.AUDIENCE) -> str:
    meta = pod["metadata"]
    return _token(
        cluster,
        meta["namespace"],
        pod["spec"]["serviceAccountName"],
        f"--audience={audience}",
        "--bound-object-kind=Pod",
        f"--bound-object-name={meta['name']}",
        f"--bound-object-uid={meta['uid']}",
    )


def _node(pod: dict[str, Any], account: str) -> base_pb2.Node:
    """The node an injected sidecar of ``pod`` sends, claiming ServiceAccount ``account``."""
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


@pytest.fixture
def shop(add_kube_cluster: Any) -> Iterator[tuple[Cluster, dict[str, dict[str, Any]]]]:
    """A cluster with two ServiceAccounts of namespace shop, web and db, and a pod of each."""
    cluster = add_kube_cluster()
    namespace(cluster, "shop", {patch.INJECT: "enabled"})
    for account in ("web", "db"):
        cluster.kubectl("-n", "shop", "create", "serviceaccount", account)
    pods = {
        "web": _pod_with(cluster, "shop", "web-1", "web", "10.244.0.21"),
        "db": _pod_with(cluster, "shop", "db-1", "db", "10.244.0.22"),
    }
    try:
        yield cluster, pods
    finally:
        cluster.stop()


def test_a_pods_token_gets_a_certificate_for_its_own_service_account_only(
    shop: tuple[Cluster, dict[str, dict[str, Any]]],
) -> None:
    cluster, pods = shop
    client = Client.connect(str(cluster.kubeconfig))
    now = datetime.datetime.now(datetime.UTC)
    mesh_ca = MeshCA(CaState(ca.DEFAULT_TRUST_DOMAIN, (ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now),)))
    issuer = PodIdentities(client, mesh_ca)

    for account, pod in pods.items():
        answer = issuer.issue(_bound(cluster, pod))
        assert ca.identity_of(answer["cert_pem"], ca.DEFAULT_TRUST_DOMAIN) == Identity("shop", account)
        assert answer["bundle_pem"] == "".join(mesh_ca.bundle())

    refusals = {
        "another audience": _bound(cluster, pods["web"], audience="https://kubernetes.default.svc"),
        "not bound to a pod": _token(cluster, "shop", "web", "--audience=gitmesh"),
        "not a token": "not-a-token",
    }
    for why, token in refusals.items():
        with pytest.raises(identity.Refused):
            issuer.issue(token)
            pytest.fail(why)

    # A deleted pod's token proves nothing any more.
    token = _bound(cluster, pods["db"])
    cluster.kubectl("-n", "shop", "delete", "pod", "db-1", "--grace-period=0", "--force")
    with pytest.raises(identity.Refused):
        issuer.issue(token)


def test_a_sidecar_claiming_another_pods_identity_in_its_node_is_refused(
    shop: tuple[Cluster, dict[str, dict[str, Any]]],
) -> None:
    cluster, pods = shop
    client = Client.connect(str(cluster.kubeconfig))
    publisher = MeshPublisher(pods=functools.partial(review.pod, client))
    now = datetime.datetime.now(datetime.UTC)
    web_cert = publisher.ca.certificate(Identity("shop", "web"), now).cert_pem.encode()

    assert publisher.authorize(_node(pods["web"], "web"), web_cert) is None
    # web's certificate, claiming db's pod (as db, or as web): refused either way.
    assert "certificate is for shop/web" in str(publisher.authorize(_node(pods["db"], "db"), web_cert))
    assert "runs as ServiceAccount db" in str(publisher.authorize(_node(pods["db"], "web"), web_cert))
    # Its own pod, with another UID (a pod of that name made again) or another address: refused.
    stale = _node({**pods["web"], "metadata": {**pods["web"]["metadata"], "uid": "0000"}}, "web")
    assert "has UID" in str(publisher.authorize(stale, web_cert))
    moved = _node({**pods["web"], "status": {"podIP": "10.244.0.99"}}, "web")
    assert "is not at 10.244.0.99" in str(publisher.authorize(moved, web_cert))
    # Outside a cluster, no pod's sidecar is served.
    assert "only from a cluster" in str(MeshPublisher().authorize(_node(pods["web"], "web"), web_cert))


def test_the_init_container_trades_the_token_over_https_checked_against_the_mesh_roots(
    shop: tuple[Cluster, dict[str, dict[str, Any]]],
) -> None:
    cluster, pods = shop
    client = Client.connect(str(cluster.kubeconfig))
    now = datetime.datetime.now(datetime.UTC)
    root = ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now)
    mesh_ca = MeshCA(CaState(ca.DEFAULT_TRUST_DOMAIN, (root,)))
    serving = mesh_ca.certificate(SERVER_IDENTITY, now, "127.0.0.1")
    server = webhook.WebhookServer(("127.0.0.1", 0), CONFIG, serving, PodIdentities(client, mesh_ca).issue)
    server.start()
    url = f"https://127.0.0.1:{server.port}{webhook.IDENTITY_PATH}"
    try:
        answer = fetch_identity(url, _bound(cluster, pods["web"]), root.cert_pem, wait=0)
        assert ca.identity_of(answer["cert_pem"], ca.DEFAULT_TRUST_DOMAIN) == Identity("shop", "web")
        with pytest.raises(GitmeshError, match="refused the pod's identity"):
            fetch_identity(url, _token(cluster, "shop", "web", "--audience=gitmesh"), root.cert_pem, wait=0)
        other = ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now).cert_pem  # not the mesh's: not trusted
        with pytest.raises(GitmeshError, match="no certificate"):
            fetch_identity(url, _bound(cluster, pods["web"]), other, wait=0)
    finally:
        server.stop()
