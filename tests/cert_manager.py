"""A real cert-manager for the tests, built by ``testenv/build.sh cert-manager``: its controller
(CA issuer, issuer readiness, approver) as a host process against a test apiserver (``running``),
or the controller, admission webhook and cainjector as pods of its own image in the test node
(``in_node``); with its CRDs and a CA Issuer whose root the test makes."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gitmesh.certs import ca
from gitmesh.demo import eventually
from tests.kube import BUILD_SCRIPT, Cluster
from tests.node import NodeCluster

ISSUER = "mesh-ca"
NAMESPACE = "gitmesh-system"


def build() -> Path:
    """The directory of the ``cert-manager`` binary and its CRDs (built on first use, then cached)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "cert-manager"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"testenv/build.sh cert-manager failed:\n{proc.stderr[-5000:]}")
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert os.access(out / "cert-manager", os.X_OK), out
    return out


def ca_issuer(cluster: Cluster | NodeCluster, root: ca.Authority, name: str = ISSUER) -> None:
    """An Issuer ``name`` in NAMESPACE signing with ``root`` (its key in a Secret of that name)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(root.cert_pem.encode()).decode(),
            "tls.key": base64.b64encode(root.key_pem.encode()).decode(),
        },
    }
    issuer = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ca": {"secretName": name}},
    }
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, issuer]})
    )
    cluster.kubectl(
        "wait", "-n", NAMESPACE, "--for=condition=Ready", f"issuer/{name}", "--timeout=120s", timeout=130
    )


def install_crds(built: Path, cluster: Cluster | NodeCluster) -> None:
    """cert-manager's CRDs, built beside its binary, installed and established."""
    for crd in sorted((built / "cert-manager-crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    # Asked again: kubectl wait errors out at once on a CRD whose status has no conditions yet.
    eventually(
        lambda: (
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/certificaterequests.cert-manager.io",
                "crd/issuers.cert-manager.io",
                check=False,
            ).returncode
        ),
        lambda code: code == 0,
        "cert-manager's CRDs established",
        60,
    )


def ready_issuer(cluster: Cluster | NodeCluster, logs: Callable[[], str]) -> ca.Authority:
    """A new root, and a CA Issuer (ISSUER in NAMESPACE) signing with it, ready; the controller's
    ``logs`` in the error when it does not get there."""
    root = ca.new_root("cluster.local", datetime.datetime.now(datetime.UTC))
    try:
        ca_issuer(cluster, root)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"the Issuer is not ready: {e.stderr}\n{logs()}") from e
    return root


@contextlib.contextmanager
def running(built: Path, cluster: Cluster, workdir: Path) -> Iterator[ca.Authority]:
    """cert-manager's CRDs installed in ``cluster``, its controller running, and a CA Issuer
    (ISSUER in NAMESPACE) ready; the Issuer's root."""
    install_crds(built, cluster)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    log = workdir / "cert-manager.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(built / "cert-manager"),
                "controller",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--cluster-resource-namespace",
                NAMESPACE,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ready_issuer(cluster, lambda: log.read_text()[-3000:])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


IMAGE = "localhost/cert-manager:test"
CONTROLLER_NAMESPACE = "cert-manager"
WEBHOOK = "cert-manager-webhook"  # its Deployment, Service and webhook configurations
WEBHOOK_CA = "cert-manager-webhook-ca"  # the Secret of the CA its serving certificate is from
# What the controller, webhook and cainjector read and write, for the ServiceAccount they share
# (one test install; cert-manager's own chart gives each its own).
_RULES = [
    {
        "apiGroups": ["cert-manager.io"],
        "resources": ["*"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    },
    # The webhook lets only who may approve for a signer set the Approved condition: the approver.
    {
        "apiGroups": ["cert-manager.io"],
        "resources": ["signers"],
        "verbs": ["approve"],
        "resourceNames": ["issuers.cert-manager.io/*", "clusterissuers.cert-manager.io/*"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    },
]


def _deployment(name: str, args: list[str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": CONTROLLER_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": "cert-manager",
                    "containers": [
                        {"name": name, "image": IMAGE, "imagePullPolicy": "Never", "args": args, **container}
                    ],
                },
            },
        },
    }


def _webhook_configuration(kind: str, path: str, operations: list[str]) -> dict[str, Any]:
    """cert-manager's admission webhook for its own kinds, its CA bundle left to cainjector."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {
            "name": WEBHOOK,
            "annotations": {"cert-manager.io/inject-ca-from-secret": f"{CONTROLLER_NAMESPACE}/{WEBHOOK_CA}"},
        },
        "webhooks": [
            {
                "name": "webhook.cert-manager.io",
                "rules": [
                    {
                        "apiGroups": ["cert-manager.io", "acme.cert-manager.io"],
                        "apiVersions": ["v1"],
                        "operations": operations,
                        "resources": ["*/*"],
                    }
                ],
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",  # nothing of cert-manager's gets past an absent webhook
                "timeoutSeconds": 10,
                "clientConfig": {
                    "service": {"name": WEBHOOK, "namespace": CONTROLLER_NAMESPACE, "path": path}
                },
            }
        ],
    }


def in_node(built: Path, cluster: NodeCluster) -> ca.Authority:
    """cert-manager in the node as its chart installs it: CRDs, the controller, the admission webhook
    (validating and mutating, failing closed) and cainjector as pods of one image, the webhook's CA
    bundle injected by cainjector; then a CA Issuer (ISSUER in NAMESPACE, which must exist) ready
    through the webhook; the Issuer's root."""
    cluster.import_static(built / "cert-manager", IMAGE)
    install_crds(built, cluster)
    meta = {"name": "cert-manager", "namespace": CONTROLLER_NAMESPACE}
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cert-manager-test"}
    dns = f"{WEBHOOK},{WEBHOOK}.{CONTROLLER_NAMESPACE},{WEBHOOK}.{CONTROLLER_NAMESPACE}.svc"
    ready = {"httpGet": {"path": "/healthz", "port": 6080}, "periodSeconds": 2}
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "cert-manager-test"},
                "rules": _RULES,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "cert-manager-test"},
                "roleRef": role,
                "subjects": [{"kind": "ServiceAccount", **meta}],
            },
            _deployment("cert-manager", ["controller", "--cluster-resource-namespace", NAMESPACE]),
            _deployment(
                WEBHOOK,
                ["webhook", "--ca-secret", f"{CONTROLLER_NAMESPACE}/{WEBHOOK_CA}", "--dns-names", dns],
                readinessProbe=ready,
            ),
            _deployment("cert-manager-cainjector", ["cainjector"]),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": WEBHOOK, "namespace": CONTROLLER_NAMESPACE},
                "spec": {"selector": {"app": WEBHOOK}, "ports": [{"port": 443, "targetPort": 10250}]},
            },
            _webhook_configuration("ValidatingWebhookConfiguration", "/validate", ["CREATE", "UPDATE"]),
            _webhook_configuration("MutatingWebhookConfiguration", "/mutate", ["CREATE"]),
        ]
    )

    def logs() -> str:
        return "\n".join(
            cluster.kubectl("-n", CONTROLLER_NAMESPACE, "logs", f"deployment/{d}", check=False).stdout[-2000:]
            for d in ("cert-manager", WEBHOOK, "cert-manager-cainjector")
        )

    try:
        cluster.kubectl(
            "-n",
            CONTROLLER_NAMESPACE,
            "rollout",
            "status",
            f"deployment/{WEBHOOK}",
            "--timeout=120s",
            timeout=130,
        )
        cluster.wait_for_service(CONTROLLER_NAMESPACE, WEBHOOK)
        eventually(lambda: webhook_ca_bundles(cluster), lambda b: all(b), "cainjector's CA bundles", 60)
    except (subprocess.CalledProcessError, TimeoutError) as e:
        raise RuntimeError(f"cert-manager's webhook is not ready: {e}\n{logs()}") from e
    return ready_issuer(cluster, logs)


def webhook_ca_bundles(cluster: NodeCluster) -> list[bytes]:
    """The CA bundle of the validating and the mutating webhook configuration (empty until cainjector
    has put one there)."""
    bundles = []
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        shown = cluster.kubectl("get", kind, WEBHOOK, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
        bundles.append(base64.b64decode(shown.stdout))
    return bundles


def webhook_ca(cluster: NodeCluster) -> bytes:
    """The CA the webhook made for its serving certificate, from its Secret."""
    shown = cluster.kubectl(
        "-n", CONTROLLER_NAMESPACE, "get", "secret", WEBHOOK_CA, "-o", "jsonpath={.data.ca\\.crt}"
    )
    return base64.b64decode(shown.stdout)


def remove_from_node(cluster: NodeCluster) -> None:
    """What ``in_node`` made, but its CRDs (cert-manager's own, left as installed CRDs are); the
    webhook configurations first, so that nothing of cert-manager's waits on a webhook going away."""
    cluster.kubectl(
        "delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found"
    )
    cluster.kubectl(
        "delete", "namespace", CONTROLLER_NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=130
    )
    cluster.kubectl("delete", "clusterrole,clusterrolebinding", "cert-manager-test", "--ignore-not-found")


__all__ = [
    "ISSUER",
    "NAMESPACE",
    "build",
    "ca_issuer",
    "in_node",
    "install_crds",
    "ready_issuer",
    "remove_from_node",
    "running",
    "webhook_ca",
    "webhook_ca_bundles",
]
