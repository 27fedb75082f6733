"""A real cert-manager for the tests: its CA issuer, issuer readiness and approver controllers,
built by ``testenv/build.sh cert-manager`` and run as a host process against a test apiserver
(``running``) or as a pod of its own image in the test node (``in_node``), with its CRDs and a CA
Issuer whose root the test makes."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

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
# What its CA issuer, issuer and approver controllers read and write, for its ServiceAccount.
_RULES = [
    {
        "apiGroups": ["cert-manager.io"],
        "resources": ["*"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


def in_node(built: Path, cluster: NodeCluster) -> ca.Authority:
    """cert-manager's CRDs installed in the node, its controller running there as a pod (its own
    image, a ServiceAccount with what it needs), and a CA Issuer (ISSUER in NAMESPACE, which must
    exist) ready; the Issuer's root."""
    cluster.import_static(built / "cert-manager", IMAGE)
    install_crds(built, cluster)
    meta = {"name": "cert-manager", "namespace": CONTROLLER_NAMESPACE}
    subject = [{"kind": "ServiceAccount", **meta}]
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cert-manager-test"}
    container = {
        "name": "controller",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "args": ["--cluster-resource-namespace", NAMESPACE],
    }
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
                "subjects": subject,
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "selector": {"matchLabels": {"app": "cert-manager"}},
                    "template": {
                        "metadata": {"labels": {"app": "cert-manager"}},
                        "spec": {"serviceAccountName": "cert-manager", "containers": [container]},
                    },
                },
            },
        ]
    )
    return ready_issuer(
        cluster,
        lambda: cluster.kubectl(
            "-n", CONTROLLER_NAMESPACE, "logs", "deployment/cert-manager", check=False
        ).stdout[-3000:],
    )


def remove_from_node(cluster: NodeCluster) -> None:
    """What ``in_node`` made, but its CRDs (cert-manager's own, left as installed CRDs are)."""
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
]
