"""The test control plane is a real Kubernetes API: real clients can use it.

kubectl (Debian's, an independent client) and the official Python client talk
to the kube-apiserver built by testenv/build.sh through the kubeconfig that
tests/kube.py writes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kube import SERVICE_CLUSTER_IP_RANGE, Cluster, KubeEnv, KubeEnvError

pytestmark = pytest.mark.integration

TESTENV = Path(__file__).resolve().parents[2] / "testenv"


def _service(namespace: str, port: int = 8080) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: checkout
          namespace: {namespace}
          labels:
            app: checkout
        spec:
          selector:
            app: checkout
          ports:
            - name: http
              port: {port}
        """
    )


def _ensure_namespace(cluster: Cluster, name: str) -> None:
    manifest = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
    cluster.kubectl("apply", "-f", "-", input=manifest)


def test_kubectl_lists_the_builtin_namespaces(kube_env: KubeEnv) -> None:
    out = kube_env.cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public"} <= set(out)


def test_apiserver_reports_the_built_version(kube_env: KubeEnv, kube_binaries: Path) -> None:
    status, body = kube_env.cluster.request("/version")
    assert status == 200
    expected = (kube_binaries / "VERSIONS").read_text().split()[1]
    assert body["gitVersion"] == expected
    assert (body["major"], body["minor"]) == ("1", expected.split(".")[1])


def test_applied_service_comes_back_with_server_defaults(kube_env: KubeEnv) -> None:
    cluster = kube_env.cluster
    _ensure_namespace(cluster, "roundtrip")
    applied = cluster.kubectl("apply", "-f", "-", input=_service("roundtrip"))
    assert "service/checkout created" in applied.stdout

    svc = json.loads(cluster.kubectl("get", "service", "checkout", "-n", "roundtrip", "-o", "json").stdout)
    spec = svc["spec"]
    assert ipaddress.ip_address(spec["clusterIP"]) in ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE)
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["type"] == "ClusterIP"
    assert spec["sessionAffinity"] == "None"
    assert spec["ipFamilies"] == ["IPv4"]
    assert spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}]
    assert svc["metadata"]["uid"]
    assert svc["metadata"]["labels"] == {"app": "checkout"}


def test_kubectl_diff_server_side_exit_codes(kube_env: KubeEnv) -> None:
    cluster = kube_env.cluster
    _ensure_namespace(cluster, "diffing")
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_service("diffing"))

    same = cluster.kubectl("diff", "--server-side", "-f", "-", input=_service("diffing"), check=False)
    assert (same.returncode, same.stdout) == (0, ""), same.stderr

    changed = cluster.kubectl(
        "diff", "--server-side", "-f", "-", input=_service("diffing", port=9090), check=False
    )
    assert changed.returncode == 1, changed.stderr
    assert "-    port: 8080" in changed.stdout
    assert "+    port: 9090" in changed.stdout

    # The server rejects an out-of-range port: that is an error, not a difference.
    invalid = cluster.kubectl(
        "diff", "--server-side", "-f", "-", input=_service("diffing", port=70000), check=False
    )
    assert invalid.returncode > 1, (invalid.returncode, invalid.stdout, invalid.stderr)
    assert "Invalid value: 70000" in invalid.stderr

    # Nothing above changed the live object.
    live = json.loads(cluster.kubectl("get", "service", "checkout", "-n", "diffing", "-o", "json").stdout)
    assert live["spec"]["ports"][0]["port"] == 8080


def test_clusters_sharing_one_etcd_do_not_see_each_other(
    kube_env: KubeEnv, add_kube_cluster: Callable[..., Cluster]
) -> None:
    first = kube_env.cluster
    second = add_kube_cluster("second")
    assert second.server != first.server
    assert second.etcd_prefix != first.etcd_prefix

    _ensure_namespace(first, "only-in-first")
    first.kubectl("create", "configmap", "marker", "-n", "only-in-first", "--from-literal=cluster=first")
    _ensure_namespace(second, "shared-name")
    second.kubectl("create", "configmap", "marker", "-n", "shared-name", "--from-literal=cluster=second")
    _ensure_namespace(first, "shared-name")
    first.kubectl("create", "configmap", "marker", "-n", "shared-name", "--from-literal=cluster=first")

    missing = second.kubectl("get", "namespace", "only-in-first", check=False)
    assert missing.returncode == 1
    assert 'namespaces "only-in-first" not found' in missing.stderr

    def marker(cluster: Cluster) -> str:
        out = cluster.kubectl("get", "configmap", "marker", "-n", "shared-name", "-o", "json").stdout
        return json.loads(out)["data"]["cluster"]

    assert (marker(first), marker(second)) == ("first", "second")
    # Each apiserver bootstrapped its own "kubernetes" Service under its own prefix.
    for cluster in (first, second):
        assert cluster.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "name").stdout.strip()


def test_unprivileged_token_is_forbidden(kube_env: KubeEnv) -> None:
    cluster = kube_env.cluster
    denied = cluster.kubectl("get", "namespaces", context="viewer", check=False)
    assert denied.returncode == 1
    assert "Forbidden" in denied.stderr
    assert 'User "gitmesh-viewer" cannot list resource "namespaces"' in denied.stderr

    status, body = cluster.request("/api/v1/namespaces", token=cluster.viewer_token)
    assert status == 403
    assert body["reason"] == "Forbidden"

    # The same request with the admin token works, so the 403 is RBAC, not authentication.
    status, _ = cluster.request("/api/v1/namespaces")
    assert status == 200
    status, _ = cluster.request("/api/v1/namespaces", token="not-a-token")
    assert status == 401


def test_service_account_tokens_are_signed_and_accepted(kube_env: KubeEnv) -> None:
    cluster = kube_env.cluster
    _ensure_namespace(cluster, "accounts")
    cluster.kubectl("create", "serviceaccount", "robot", "-n", "accounts")
    token = cluster.kubectl("create", "token", "robot", "-n", "accounts").stdout.strip()
    assert token.count(".") == 2  # a JWT signed with --service-account-signing-key-file

    status, body = cluster.request("/api/v1/namespaces", token=token)
    assert status == 403  # authenticated by the service-account key, not authorized by RBAC
    assert "system:serviceaccount:accounts:robot" in body["message"]


def test_python_kubernetes_client_uses_the_kubeconfig(kube_env: KubeEnv) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    kubeconfig = str(kube_env.cluster.kubeconfig)
    with config.new_client_from_config(config_file=kubeconfig) as api:
        names = {ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names

    with (
        config.new_client_from_config(config_file=kubeconfig, context="viewer") as api,
        pytest.raises(ApiException) as denied,
    ):
        client.CoreV1Api(api).list_namespace()
    assert denied.value.status == 403


def test_a_broken_apiserver_fails_with_its_log(kube_env: KubeEnv) -> None:
    with pytest.raises(KubeEnvError) as failure:
        kube_env.add_cluster("broken", extra_args=["--no-such-flag"])
    message = str(failure.value)
    assert "exited with code" in message
    assert "unknown flag: --no-such-flag" in message
    assert "broken" not in kube_env.clusters


def _fetch_crds(testenv: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(testenv / "crds.sh")],
        env={**os.environ, "GITMESH_TESTENV_CACHE": str(cache)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_official_crds_are_fetched_only_with_the_pinned_checksum(tmp_path: Path) -> None:
    testenv = tmp_path / "testenv"
    shutil.copytree(TESTENV / "osm-crds", testenv / "osm-crds")
    shutil.copy(TESTENV / "crds.sh", testenv)

    fetched = _fetch_crds(testenv, tmp_path / "good")
    assert fetched.returncode == 0, fetched.stderr
    assert (Path(fetched.stdout.strip()) / "config_meshconfig.yaml").is_file()

    go_sum = testenv / "osm-crds" / "go.sum"
    module_line, rest = go_sum.read_text().split("\n", 1)
    digest = module_line.index(" h1:") + 4
    other = "A" if module_line[digest] != "A" else "B"
    go_sum.write_text(module_line[:digest] + other + module_line[digest + 1 :] + "\n" + rest)
    refused = _fetch_crds(testenv, tmp_path / "bad")
    assert refused.returncode != 0
    assert "checksum mismatch" in refused.stderr
    assert not list((tmp_path / "bad").glob("crds/osm-*/*.yaml"))
