"""gitmesh install's objects and the leader's Lease on a real kube-apiserver (no node: nothing runs
the Deployment here; tests/node/test_node.py runs it)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.controller.leader import LEASE, LEASE_DURATION, RETRY_PERIOD, Elector, KubeLeases
from gitmesh.install import cluster as install_cluster
from gitmesh.install.manifests import NAMESPACE, InstallOptions, objects
from gitmesh.kube.client import Client
from tests.kube import Cluster

pytestmark = pytest.mark.integration

OPTIONS = InstallOptions(image="localhost/gitmesh:dev", repo="http://git.example.org/mesh.git")
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:gitmesh"


@pytest.fixture
def cluster(add_kube_cluster: Any) -> Any:
    c = add_kube_cluster()
    yield c
    c.stop()


def can(c: Cluster, verb: str, resource: str, namespace: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "--as", SERVICE_ACCOUNT]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    return c.kubectl(*args, check=False).stdout.strip() == "yes"


def allowed(client: Client, verb: str, group: str, resource: str, namespace: str) -> bool:
    """Whether gitmesh's ServiceAccount may, as the API server's authorizer answers."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": SERVICE_ACCOUNT,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": resource,
                "namespace": namespace,
            },
        },
    }
    answer = client.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
    return bool(answer["status"].get("allowed"))


def get_json(c: Cluster, *args: str) -> Any:
    return json.loads(c.kubectl("get", "-o", "json", *args).stdout)


def test_install_applies_least_privilege_and_uninstall_removes_only_what_it_made(cluster: Cluster) -> None:
    client = Client.connect(str(cluster.kubeconfig))
    applied = install_cluster.apply(client, objects(OPTIONS))
    assert "Deployment/gitmesh" in applied and "ClusterRole/gitmesh" in applied
    deployment = get_json(cluster, "-n", NAMESPACE, "deployment", "gitmesh")
    assert deployment["spec"]["replicas"] == 2
    # The mesh CA is made before the replicas start, so that they share one.
    ca = get_json(cluster, "-n", NAMESPACE, "secret", "gitmesh-ca")
    assert set(ca["data"]) == {"ca.json"}
    # Applied again (an upgrade with the same options): nothing changes.
    install_cluster.apply(client, objects(OPTIONS))
    again = get_json(cluster, "-n", NAMESPACE, "deployment", "gitmesh")
    assert again["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert get_json(cluster, "-n", NAMESPACE, "secret", "gitmesh-ca")["data"] == ca["data"]

    # What the controller needs, and no more.
    assert can(cluster, "patch", "trafficsplits.split.smi-spec.io")
    assert can(cluster, "watch", "endpointslices.discovery.k8s.io")
    assert can(cluster, "create", "tokenreviews.authentication.k8s.io")
    assert can(cluster, "update", "leases.coordination.k8s.io", NAMESPACE)
    assert can(cluster, "get", "secrets", NAMESPACE)
    assert not can(cluster, "get", "secrets", "default")
    assert not can(cluster, "update", "leases.coordination.k8s.io", "kube-system")
    assert not can(cluster, "create", "deployments.apps", NAMESPACE)
    assert not can(cluster, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    # The cert-manager provider's CertificateRequests: in gitmesh-system, and only there (asked by a
    # SubjectAccessReview: kubectl auth can-i misreads a resource whose CRD is not installed).
    assert allowed(client, "create", "cert-manager.io", "certificaterequests", NAMESPACE)
    assert allowed(client, "delete", "cert-manager.io", "certificaterequests", NAMESPACE)
    assert not allowed(client, "create", "cert-manager.io", "certificaterequests", "default")

    # Someone's Secret in gitmesh-system and a TrafficSplit: uninstall keeps what holds them.
    cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", "mesh-git", "--from-literal=password=x")
    cluster.kubectl("create", "namespace", "shop")
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input="""
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web, namespace: shop}
spec: {service: web, backends: [{service: web-v1, weight: 100}]}
""",
    )
    result = CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
    assert result.exit_code == 0, result.output
    assert "deleted Deployment/gitmesh" in result.output
    assert "kept CustomResourceDefinition/trafficsplits.split.smi-spec.io: trafficsplits still exist" in (
        result.output
    )
    assert "kept Namespace/gitmesh-system: it still holds Secret/gitmesh-ca, Secret/mesh-git" in result.output
    left = cluster.kubectl(
        "get",
        "deployment,service,configmap,serviceaccount,role,rolebinding,poddisruptionbudget",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/managed-by=gitmesh-install",
        "-o",
        "name",
    ).stdout
    assert left == ""
    assert cluster.kubectl("get", "clusterrole", "gitmesh", check=False).returncode != 0
    assert get_json(cluster, "-n", "shop", "trafficsplit", "web")["spec"]["service"] == "web"
    assert get_json(cluster, "-n", NAMESPACE, "secret", "mesh-git")["data"]["password"]
    gone = [
        f"CustomResourceDefinition/{n}"
        for n in ("tcproutes.specs.smi-spec.io", "udproutes.specs.smi-spec.io")
    ]
    assert all(f"deleted {g}" in result.output for g in gone)


def test_two_electors_one_leader_and_the_other_takes_over_after_the_lease_duration(cluster: Cluster) -> None:
    clients = [Client.connect(str(cluster.kubeconfig)) for _ in range(2)]
    cluster.kubectl("create", "namespace", NAMESPACE)
    a, b = (Elector(KubeLeases(k, NAMESPACE, LEASE), name) for k, name in zip(clients, "ab", strict=True))
    lost: list[str] = []
    stop_a, stop_b = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=a.run, args=(stop_a, lambda: lost.append("a"))),
        threading.Thread(target=b.run, args=(stop_b, lambda: lost.append("b"))),
    ]
    for t in threads:
        t.start()
    try:
        assert a.leading.wait(10) or b.leading.wait(10)
        first, second = (a, b) if a.leading.is_set() else (b, a)
        time.sleep(RETRY_PERIOD * 3)  # several renewals: the other replica never leads meanwhile
        assert not second.leading.is_set()
        lease = get_json(cluster, "-n", NAMESPACE, "lease", LEASE)
        assert lease["spec"]["holderIdentity"] == first.identity
        assert lease["spec"]["leaseDurationSeconds"] == LEASE_DURATION
        # The leader goes without releasing (as a killed pod does).
        (stop_a if first is a else stop_b).set()
        stopped_at = time.monotonic()
        assert second.leading.wait(LEASE_DURATION + RETRY_PERIOD * 3)
        assert time.monotonic() - stopped_at >= LEASE_DURATION - RETRY_PERIOD
        lease = get_json(cluster, "-n", NAMESPACE, "lease", LEASE)
        assert lease["spec"]["holderIdentity"] == second.identity
        assert lease["spec"]["leaseTransitions"] == 1
        assert lost == []
    finally:
        stop_a.set()
        stop_b.set()
        for t in threads:
            t.join()
