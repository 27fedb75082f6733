"""`gitmesh run` as a controller against a real kube-apiserver: commits applied, a broken one
refused, drift put back, and its record kept in a ConfigMap (checked with kubectl)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import eventually
from tests import factory as f
from tests.conftest import EXAMPLE_OBJECTS, EXAMPLE_REPO, GitRepo
from tests.controller import RunningController, condition
from tests.kube import Cluster

pytestmark = pytest.mark.integration

SPLIT = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()


@pytest.fixture
def controlled(
    add_kube_cluster: Callable[..., Cluster], git_repo: GitRepo, tmp_path: Path
) -> Iterator[tuple[Cluster, GitRepo, RunningController]]:
    """A fresh cluster with the CRDs, the bookstore repo, and gitmesh run following it into the cluster."""
    cluster = add_kube_cluster()
    installed = CliRunner().invoke(cli, ["install", "crds", "--kubeconfig", str(cluster.kubeconfig)])
    assert installed.exit_code == 0, installed.output
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    args = ("--repo", git_repo.path, "--path", "mesh", "--kubeconfig", cluster.kubeconfig, "--interval", "1s")
    controller = RunningController(tmp_path, [*args, "--drift-interval", "2s"]).start()
    try:
        yield cluster, git_repo, controller
        assert controller.stop() == 0
    finally:
        if controller.process and controller.process.poll() is None:
            controller.kill()
        cluster.stop()


def weights(cluster: Cluster) -> list[int]:
    split = json.loads(cluster.kubectl("get", "trafficsplit", "-n", "bookstore", "-o", "json").stdout)
    return [b["weight"] for b in split["items"][0]["spec"]["backends"]]


def patch_weights(cluster: Cluster, v1: int, v2: int) -> None:
    """Change the split behind gitmesh's back, as someone with kubectl would."""
    backends = [{"service": "bookstore-v1", "weight": v1}, {"service": "bookstore-v2", "weight": v2}]
    patch = json.dumps({"spec": {"backends": backends}})
    cluster.kubectl(
        "patch", "trafficsplit", "-n", "bookstore", "bookstore-split", "--type=merge", "-p", patch
    )


def record_configmap(cluster: Cluster) -> dict[str, Any]:
    name = "gitmesh-reconciler-default"
    cm = cluster.kubectl("get", "configmap", "-n", "gitmesh-system", name, "-o", "json")
    return dict(json.loads(cm.stdout))


def stored_record(cluster: Cluster) -> dict[str, Any]:
    return dict(json.loads(record_configmap(cluster)["data"]["record"]))


def test_a_broken_commit_between_two_good_ones_in_a_cluster(
    controlled: tuple[Cluster, GitRepo, RunningController],
) -> None:
    cluster, mesh, c = controlled
    good = mesh.git("rev-parse", "HEAD").strip()
    c.wait_applied(good)
    assert weights(cluster) == [75, 25]
    broken = mesh.commit("broken", {"mesh/bookstore/split.yaml": SPLIT.replace("weight: 25", "weight: -25")})
    record = c.wait_result(broken, "invalid")
    assert condition(record, "Stalled") == ("True", "ValidationFailed")
    assert weights(cluster) == [75, 25]
    # Drift while the head cannot be applied is put right to the last good revision; the source
    # still says why its head is not applied.
    patch_weights(cluster, 1, 1)
    eventually(lambda: weights(cluster), lambda w: w == [75, 25], "the drift put back", timeout=60)
    # Under load the watch's events of the patch and of its repair may also retry the stalled head
    # (invalid again): the repair is the drift entry of the last applied revision.
    record = c.wait(
        lambda s: (
            bool(s)
            and any(h["trigger"] == "drift" and h["ref"] == "last applied" for h in s["default"]["history"])
        ),
        "drift recorded",
    )
    repair = next(
        h for h in record["default"]["history"] if h["trigger"] == "drift" and h["ref"] == "last applied"
    )
    assert repair["revision"] == good
    assert all(h["result"] == "invalid" for h in record["default"]["history"] if h["revision"] == broken)
    assert condition(record["default"], "Stalled") == ("True", "ValidationFailed")
    assert condition(record["default"], "Reconciling")[0] == "False"
    shift = SPLIT.replace("weight: 75", "weight: 40").replace("weight: 25", "weight: 60")
    fixed = mesh.commit("shift", {"mesh/bookstore/split.yaml": shift})
    c.wait_applied(fixed)
    assert weights(cluster) == [40, 60]
    # The record lives in the cluster, where kubectl and gitmesh history read it.
    stored = stored_record(cluster)
    assert stored["lastAppliedRevision"] == fixed
    assert [h["result"] for h in stored["history"]] == ["applied", "applied", "invalid", "applied"]
    history = CliRunner().invoke(cli, ["history", "--kubeconfig", str(cluster.kubeconfig)])
    assert f"{broken[:12]}  invalid" in history.output


def test_drift_in_the_cluster_is_put_back_and_suspension_keeps_the_record(
    controlled: tuple[Cluster, GitRepo, RunningController],
) -> None:
    cluster, mesh, c = controlled
    c.wait_applied(mesh.git("rev-parse", "HEAD").strip())
    patch_weights(cluster, 1, 1)
    eventually(lambda: weights(cluster), lambda w: w == [75, 25], "the drift put back", timeout=60)
    record = c.wait(lambda s: bool(s) and s["default"]["history"][0]["trigger"] == "drift", "drift recorded")
    assert (
        record["default"]["history"][0]["summary"]
        == f"0 to create, 1 to update, 0 to delete, {EXAMPLE_OBJECTS - 1} unchanged."
    )
    kubeconfig = str(cluster.kubeconfig)
    assert CliRunner().invoke(cli, ["suspend", "default", "--kubeconfig", kubeconfig]).exit_code == 0
    eventually(lambda: c.metric('gitmesh_suspended_runs_total{source="default"}'), bool, "a run skipped")
    assert stored_record(cluster)["lastAppliedRevision"] == record["default"]["lastAppliedRevision"]
    late = mesh.commit("late", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    assert CliRunner().invoke(cli, ["resume", "default", "--kubeconfig", kubeconfig]).exit_code == 0
    c.wait_applied(late)
    assert "suspended" not in record_configmap(cluster)["data"]


RECONCILER_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: gitmesh-reconcile-default}
rules:
- {apiGroups: [gitmesh.dev], resources: [sources], resourceNames: [default], verbs: [reconcile]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: gitmesh-reconcile-default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gitmesh-reconcile-default}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: gitmesh-viewer}
"""


def test_a_reconcile_request_is_allowed_by_the_clusters_rbac(
    controlled: tuple[Cluster, GitRepo, RunningController],
) -> None:
    cluster, mesh, c = controlled
    c.wait_applied(mesh.git("rev-parse", "HEAD").strip())

    def ask(token: str, source: str = "default") -> tuple[int, Any]:
        return c.post(f"/sources/{source}/reconcile", b"", {"Authorization": f"Bearer {token}"})

    # A token the cluster does not know (TokenReview), and one whose user RBAC does not let reconcile.
    assert ask("a-token-nobody-issued-0123456789") == (401, {"error": "missing or wrong bearer token"})
    refused = (403, {"error": "gitmesh-viewer may not reconcile sources.gitmesh.dev 'default'"})
    assert ask(cluster.viewer_token) == refused
    assert ask(cluster.admin_token) == (202, {"triggered": ["default"]})  # system:masters may do anything
    cluster.kubectl("apply", "-f", "-", input=RECONCILER_ROLE)
    eventually(lambda: ask(cluster.viewer_token), lambda r: r == (202, {"triggered": ["default"]}), "granted")
    # The role names one source: another is still refused, whether or not it exists.
    assert ask(cluster.viewer_token, "other")[0] == 403
    assert ask(cluster.admin_token, "other") == (404, {"error": "no source 'other'"})
