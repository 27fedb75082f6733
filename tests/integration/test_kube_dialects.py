"""The two walls against data loss, in a real kube-apiserver (checked with kubectl): a revision that
writes a kind at a version gitmesh does not read is refused, by `gitmesh apply` and by `gitmesh run`;
and prune never deletes an object the revision still declares, whatever else went wrong."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from gitmesh import pipeline
from gitmesh.cli import cli
from gitmesh.plan.model import Action
from gitmesh.settings import kubernetes
from gitmesh.sync.git import open_repo, read_revision
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.controller import RunningController, condition
from tests.kube import Cluster

pytestmark = pytest.mark.integration

TARGETS = {
    f"mesh/{name}": (EXAMPLE_REPO / name).read_text()
    for name in ("bookstore/access.yaml", "bookwarehouse/access.yaml", "bookwarehouse/mysql.yaml")
}


def bumped() -> dict[str, str]:
    """Every TrafficTarget file of the bookstore, moved to a version gitmesh does not read."""
    out = {}
    for path, text in TARGETS.items():
        assert "apiVersion: access.smi-spec.io/v1alpha3" in text, path
        out[path] = text.replace("access.smi-spec.io/v1alpha3", "access.smi-spec.io/v1alpha9")
    return out


def live_targets(cluster: Cluster) -> set[str]:
    listed = json.loads(cluster.kubectl("get", "traffictargets", "-A", "-o", "json").stdout)
    return {f"{t['metadata']['namespace']}/{t['metadata']['name']}" for t in listed["items"]}


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    return git_repo


def apply(cluster: Cluster, repo: GitRepo) -> tuple[int, str]:
    args = ["apply", "--repo", str(repo.path), "--path", "mesh", "--kubeconfig", str(cluster.kubeconfig)]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_apply_refuses_targets_at_an_unknown_version_and_they_stay(
    crd_cluster: Cluster, mesh: GitRepo
) -> None:
    assert apply(crd_cluster, mesh)[0] == 0
    before = live_targets(crd_cluster)
    assert len(before) == 3
    mesh.commit("TrafficTargets to v1alpha9", bumped())
    code, output = apply(crd_cluster, mesh)
    assert code == 1
    assert "GM012" in output and "not at access.smi-spec.io/v1alpha9" in output
    assert live_targets(crd_cluster) == before


def test_prune_never_deletes_what_the_revision_declares(crd_cluster: Cluster, mesh: GitRepo) -> None:
    assert apply(crd_cluster, mesh)[0] == 0
    before = live_targets(crd_cluster)
    assert "bookstore/bookbuyer-access-bookstore" in before
    backend = kubernetes(str(crd_cluster.kubeconfig))
    try:
        revision = read_revision(open_repo(str(mesh.path)), "HEAD", "mesh")
        checked = pipeline.check(revision)
        assert checked.ok
        # As if something upstream dropped the TrafficTargets from what is to be applied while
        # the revision still has them: the plan deletes none of them, and neither does apply.
        lost = replace(checked, desired=tuple(m for m in checked.desired if m.ref.kind != "TrafficTarget"))
        plan = pipeline.plan(revision, lost, backend, "default")
        assert not [c for c in plan.changes if c.action is Action.DELETE]
        pipeline.apply(plan, backend)
        assert live_targets(crd_cluster) == before
        # Gone from the revision for real, a TrafficTarget is pruned.
        mesh.git("rm", "-q", "mesh/bookstore/access.yaml")
        mesh.commit("bookbuyer loses the bookstore")
        revision = read_revision(open_repo(str(mesh.path)), "HEAD", "mesh")
        plan = pipeline.plan(revision, pipeline.check(revision), backend, "default")
        deleted = {str(c.ref) for c in plan.changes if c.action is Action.DELETE}
        assert deleted == {
            "TrafficTarget/bookstore/bookbuyer-access-bookstore",
            "HTTPRouteGroup/bookstore/bookstore-service-routes",
        }
        pipeline.apply(plan, backend)
        assert live_targets(crd_cluster) == before - {"bookstore/bookbuyer-access-bookstore"}
    finally:
        backend.close()


def test_gitmesh_run_refuses_targets_at_an_unknown_version_and_says_why(
    crd_cluster: Cluster, mesh: GitRepo, tmp_path: Path
) -> None:
    args = ("--repo", mesh.path, "--path", "mesh", "--kubeconfig", crd_cluster.kubeconfig, "--interval", "1s")
    controller = RunningController(tmp_path, list(args)).start()
    try:
        controller.wait_applied(mesh.git("rev-parse", "HEAD").strip())
        before = live_targets(crd_cluster)
        assert len(before) == 3
        bump = mesh.commit("TrafficTargets to v1alpha9", bumped())
        record = controller.wait_result(bump, "invalid")
        assert condition(record, "Stalled") == ("True", "ValidationFailed")
        (ready,) = [c for c in record["conditions"] if c["type"] == "Ready"]
        assert ready["status"] == "False"
        assert "GM012" in ready["message"] and "access.smi-spec.io/v1alpha9" in ready["message"]
        assert live_targets(crd_cluster) == before
        assert controller.stop() == 0
    finally:
        if controller.process and controller.process.poll() is None:
            controller.kill()


def test_a_split_may_name_a_service_the_cluster_has_from_elsewhere(
    crd_cluster: Cluster, mesh: GitRepo
) -> None:
    assert apply(crd_cluster, mesh)[0] == 0
    split = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()
    assert "service: bookstore-v2\n" in split
    mesh.commit(
        "v2 from the Helm chart", {"mesh/bookstore/split.yaml": split.replace("bookstore-v2", "helm-v2")}
    )
    validated = CliRunner().invoke(cli, ["validate", "--repo", str(mesh.path), "--path", "mesh"])
    assert validated.exit_code == 0, validated.output
    assert "GM110" in validated.output
    code, output = apply(crd_cluster, mesh)
    assert code == 1
    assert "GM102" in output and "no Service 'helm-v2' in namespace 'bookstore'" in output
    # Installed by someone else (not labelled as gitmesh's): the split may name it.
    crd_cluster.kubectl("create", "service", "clusterip", "helm-v2", "--tcp=14001:14001", "-n", "bookstore")
    code, output = apply(crd_cluster, mesh)
    assert code == 0, output
    live = json.loads(crd_cluster.kubectl("get", "trafficsplit", "-n", "bookstore", "-o", "json").stdout)
    assert [b["service"] for b in live["items"][0]["spec"]["backends"]] == ["bookstore-v1", "helm-v2"]
