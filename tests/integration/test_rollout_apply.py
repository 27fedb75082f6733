"""`gitmesh apply` starting rollouts, `gitmesh plan` showing them, and promote/abort/retry by hand,
against real Git and the embedded store, then a real kube-apiserver (state in a ConfigMap)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gitmesh.cli import cli
from gitmesh.plan import encode
from gitmesh.rollout import driver, revert
from gitmesh.rollout.model import Phase
from gitmesh.settings import Settings, embedded, kubernetes
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.kube import Cluster

pytestmark = pytest.mark.integration

SPLIT_FILE = "mesh/bookstore/split.yaml"
POLICY = '  annotations:\n    rollout.gitmesh.dev/steps: "20,60"\n    rollout.gitmesh.dev/interval: "1m"\n'


def split_yaml(v1: int, v2: int, policy: str = POLICY) -> str:
    return (
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n"
        f"  name: bookstore-split\n  namespace: bookstore\n{policy}spec:\n  service: bookstore\n  backends:\n"
        f"  - service: bookstore-v1\n    weight: {v1}\n  - service: bookstore-v2\n    weight: {v2}\n"
    )


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore, v1 only", {SPLIT_FILE: split_yaml(100, 0)})
    return git_repo


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def weights(backend: Settings) -> dict[str, int]:
    (obj,) = [
        o.obj
        for r, o in backend.objects.list().items()
        if r.kind == "TrafficSplit" and driver.split_key(r) == "bookstore/bookstore-split"
    ]
    return driver.weights_of(obj)


def test_apply_starts_a_rollout_and_plan_shows_it(mesh: GitRepo, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    assert run("apply", *where).exit_code == 0  # the first revision: nothing to roll out from
    backend = embedded(store)
    assert weights(backend) == {"bookstore-v1": 100, "bookstore-v2": 0} and backend.state.rollouts.all() == {}

    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    plan = run("plan", *where)
    assert "this revision starts a rollout: 2 step(s) 80/20, 40/60, then 0/100, every 60s" in plan.output
    result = run("apply", *where)
    assert result.exit_code == 0, result.output
    assert weights(backend) == {"bookstore-v1": 80, "bookstore-v2": 20}
    status = run("rollout", "status", "--store", store)
    assert "bookstore/bookstore-split  Progressing" in status.output
    assert "weights     bookstore-v1 80%  bookstore-v2 20%" in status.output

    # Planning the same revision again: the rollout is under way, the weights stay.
    plan = run("plan", *where)
    assert "Rollout under way: bookstore/bookstore-split Progressing, step 1 of 2" in plan.output
    assert "the rollout toward these weights is Progressing; they stay as they are" in plan.output
    assert run("apply", *where).exit_code == 0
    assert weights(backend) == {"bookstore-v1": 80, "bookstore-v2": 20}

    # A commit changing the policy but not the target: the rollout goes on under the new policy.
    stricter = POLICY + '    rollout.gitmesh.dev/success-rate: "99.9"\n'
    mesh.commit("stricter checks", {SPLIT_FILE: split_yaml(0, 100, stricter)})
    assert "its policy changes from the next check" in run("apply", *where).output
    r = driver.load(backend)["bookstore/bookstore-split"]
    assert (r.phase, r.step, r.policy.success_rate) == (Phase.PROGRESSING, 0, 99.9)
    assert weights(backend) == {"bookstore-v1": 80, "bookstore-v2": 20}

    # Promoted by hand: the target at once, and Git and the store agree again.
    assert run("rollout", "promote", "bookstore-split", "--store", store).exit_code == 0
    assert weights(backend) == {"bookstore-v1": 0, "bookstore-v2": 100}
    assert driver.load(backend)["bookstore/bookstore-split"].phase is Phase.SUCCEEDED
    assert "No changes." in run("plan", *where).output


def test_apply_planfile_writes_exactly_the_saved_plan_rollout_step_included(
    mesh: GitRepo, tmp_path: Path
) -> None:
    store, saved = tmp_path / "store.db", tmp_path / "plan.json"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    assert run("apply", *where).exit_code == 0
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    shown = run("plan", *where, "--out", saved)
    assert "(step 1 of 3: 100/0 -> 80/20, then analysis)" in shown.output, shown.output
    plan = encode.loads(saved.read_text())
    (split,) = [c.manifest for c in plan.changes if c.manifest is not None]
    assert driver.weights_of(split) == {"bookstore-v1": 80, "bookstore-v2": 20}
    (step,) = plan.rollouts
    assert step.record is not None and step.starts

    result = run("apply", saved, "--store", store)
    assert result.exit_code == 0, result.output
    backend = embedded(store)
    assert weights(backend) == {"bookstore-v1": 80, "bookstore-v2": 20}
    assert backend.state.rollouts.all() == {step.split: step.record}  # the saved state, not a new one

    # A plan saved while the rollout is at one state is refused once it moved, whatever else held still.
    mesh.commit("half to v2", {SPLIT_FILE: split_yaml(50, 50)})
    assert run("plan", *where, "--out", saved).exit_code == 0
    moved = {**step.record, "reason": "moved by hand"}
    backend.state.rollouts.save(step.split, moved)
    refused = run("apply", saved, "--store", store)
    assert refused.exit_code == 1 and "changed since this plan was made" in refused.output, refused.output
    assert weights(backend) == {"bookstore-v1": 80, "bookstore-v2": 20}
    assert backend.state.rollouts.all() == {step.split: moved}


def test_abort_holds_the_stable_weights_until_a_commit_changes_the_target(
    mesh: GitRepo, tmp_path: Path
) -> None:
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    run("apply", *where)
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    run("apply", *where)
    result = run("rollout", "abort", "bookstore/bookstore-split", "--store", store)
    assert result.exit_code == 0 and "Aborted (aborted by hand)" in result.output, result.output
    backend = embedded(store)
    assert weights(backend) == {"bookstore-v1": 100, "bookstore-v2": 0}
    assert "not retried until a commit changes them" in run("apply", *where).output
    assert weights(backend) == {"bookstore-v1": 100, "bookstore-v2": 0}
    assert run("rollout", "abort", "bookstore-split", "--store", store).exit_code == 1  # not under way

    mesh.commit("half to v2", {SPLIT_FILE: split_yaml(50, 50)})
    assert "starts a rollout" in run("apply", *where).output
    assert weights(backend) == {"bookstore-v1": 90, "bookstore-v2": 10}
    status = json.loads(
        run("rollout", "status", "bookstore-split", "--store", store, "--output", "json").stdout
    )
    (rollout,) = status["rollouts"]
    assert (rollout["split"], rollout["phase"]) == ("bookstore/bookstore-split", "Progressing")
    assert rollout["target"] == {"bookstore-v1": 50, "bookstore-v2": 50}


def test_a_split_without_a_policy_takes_its_weights_at_once(mesh: GitRepo, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    run("apply", *where)
    mesh.commit("no policy, all to v2", {SPLIT_FILE: split_yaml(0, 100, policy="")})
    assert "Rollout" not in run("apply", *where).output
    assert weights(embedded(store)) == {"bookstore-v1": 0, "bookstore-v2": 100}
    assert run("rollout", "status", "--store", store).stdout.strip() == "No rollouts."


def test_rollout_commands_name_a_rollout_that_exists(tmp_path: Path) -> None:
    result = run("rollout", "promote", "nope", "--store", tmp_path / "store.db")
    assert result.exit_code == 1 and "no single rollout of 'nope' (rollouts: none)" in result.output


@pytest.fixture
def cluster(add_kube_cluster: Callable[..., Cluster]) -> Iterator[Cluster]:
    c = add_kube_cluster()
    assert run("install", "crds", "--kubeconfig", c.kubeconfig).exit_code == 0
    yield c
    c.stop()


def test_on_kubernetes_the_rollout_lives_in_a_configmap(mesh: GitRepo, cluster: Cluster) -> None:
    where = ("--repo", mesh.path, "--path", "mesh", "--kubeconfig", cluster.kubeconfig)
    assert run("apply", *where).exit_code == 0
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    result = run("apply", *where)
    assert result.exit_code == 0 and "starts a rollout" in result.output, result.output
    split = json.loads(
        cluster.kubectl("get", "-n", "bookstore", "trafficsplit", "bookstore-split", "-o", "json").stdout
    )
    assert [b["weight"] for b in split["spec"]["backends"]] == [80, 20]
    cm = json.loads(
        cluster.kubectl("get", "-n", "gitmesh-system", "configmap", "gitmesh-rollouts", "-o", "json").stdout
    )
    assert json.loads(cm["data"]["bookstore_bookstore-split"])["phase"] == "Progressing"

    backend = kubernetes(str(cluster.kubeconfig))
    other = backend.state.rollouts.all()["bookstore/bookstore-split"] | {"split": "shop/other"}
    backend.state.rollouts.save("shop/other", other)  # another split's key: left alone below
    assert run("rollout", "promote", "bookstore-split", "--kubeconfig", cluster.kubeconfig).exit_code == 0
    assert set(backend.state.rollouts.all()) == {"bookstore/bookstore-split", "shop/other"}
    split = json.loads(
        cluster.kubectl("get", "-n", "bookstore", "trafficsplit", "bookstore-split", "-o", "json").stdout
    )
    assert [b["weight"] for b in split["spec"]["backends"]] == [0, 100]
    assert backend.state.rollouts.all()["bookstore/bookstore-split"]["phase"] == "Succeeded"
    assert "No changes." in run("plan", *where).output


def test_a_revert_branch_is_pushed_to_the_remote(mesh: GitRepo, tmp_path: Path) -> None:
    """After a failure `gitmesh rollout run --push-reverts URL` pushes this (push_revert is what it calls)."""
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    run("apply", *where)
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    run("apply", *where)
    run("rollout", "abort", "bookstore-split", "--store", store)
    r = driver.load(embedded(store))["bookstore/bookstore-split"]
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(mesh.path), str(remote)], check=True)

    branch = revert.push_revert(f"file://{remote}", r)
    assert branch == f"gitmesh/rollback/{r.revision[:12]}"

    def git(*args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(remote), *args], capture_output=True, text=True).stdout

    # Only the weights went back; the policy and everything else are as the failed commit wrote them.
    assert git("show", f"{branch}:{SPLIT_FILE}") == split_yaml(100, 0)
    assert git("diff", "--stat", r.revision, branch).splitlines()[0].split() == [SPLIT_FILE, "|", "4", "++--"]
    subject = git("log", "-1", "--format=%s", branch).strip()
    assert subject == "Roll back bookstore/bookstore-split to its stable weights"
    # The remote's main is untouched: the revert waits for a pull request.
    assert git("rev-parse", "main").strip() == r.revision


def test_the_pull_request_plan_says_what_merging_does_to_rollouts(mesh: GitRepo) -> None:
    base = mesh.git("rev-parse", "HEAD").strip()
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    preview = ("plan", "--repo", mesh.path, "--path", "mesh", "--base", base, "--head", "HEAD")
    markdown = run(*preview, "--output", "markdown")
    assert markdown.exit_code == 0, markdown.output
    rollouts = markdown.output.split("#### Rollouts\n\n", 1)[1]
    assert rollouts.startswith(
        "- Rollout of bookstore/bookstore-split: this revision starts a rollout: 2 step(s) 80/20, 40/60, "
        "then 0/100, every 60s"
    ), rollouts
    assert "Rollouts" in run(*preview).output  # and in the text plan
    mesh.commit("no policy", {SPLIT_FILE: split_yaml(0, 100, policy="")})
    unchanged_policy = run(
        "plan", "--repo", mesh.path, "--path", "mesh", "--base", "HEAD~1", "--output", "markdown"
    )
    assert "#### Rollouts" not in unchanged_policy.output  # weights unchanged: nothing rolls out


def test_rollout_status_watch_follows_a_rollout_to_its_end(mesh: GitRepo, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    assert run("apply", *where).exit_code == 0
    mesh.commit("all to v2", {SPLIT_FILE: split_yaml(0, 100)})
    assert run("apply", *where).exit_code == 0
    watch = ["rollout", "status", "-w", "--interval", "0.1", "-n", "bookstore", "--store", str(store)]
    with subprocess.Popen(
        [sys.executable, "-m", "gitmesh", *watch], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watching:
        assert watching.stdout is not None
        assert watching.stdout.readline().startswith("bookstore/bookstore-split  Progressing")
        assert run("rollout", "promote", "bookstore-split", "--store", store).exit_code == 0
        rest = watching.stdout.read()  # it ends by itself once no rollout is under way
        assert watching.wait(timeout=60) == 0
    assert "bookstore/bookstore-split  Succeeded" in rest, rest
    other = run("rollout", "status", "-n", "bookbuyer", "--store", store)
    assert other.stdout.strip() == "No rollouts."


ROUTE_FILE = "mesh/bookstore/route.yaml"


def route_yaml(v1: int, v2: int) -> str:
    """The bookstore's split as an HTTPRoute: a beta path to v2, and the split rule under the policy."""
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n"
        f"  name: bookstore\n  namespace: bookstore\n{POLICY}spec:\n"
        '  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]\n  rules:\n'
        "  - matches: [{path: {value: /beta}}]\n    backendRefs: [{name: bookstore-v2, port: 14001}]\n"
        "  - backendRefs:\n"
        f"    - name: bookstore-v1\n      port: 14001\n      weight: {v1}\n"
        f"    - name: bookstore-v2\n      port: 14001\n      weight: {v2}\n"
    )


def test_an_http_route_s_weights_are_rolled_out_and_back_like_a_split(mesh: GitRepo, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    where = ("--repo", mesh.path, "--path", "mesh", "--store", store)
    (mesh.path / SPLIT_FILE).unlink()
    mesh.commit("route, v1 only", {ROUTE_FILE: route_yaml(100, 0)})
    assert run("apply", *where).exit_code == 0
    backend = embedded(store)

    def route_weights() -> dict[str, int]:
        (obj,) = [o.obj for r, o in backend.objects.list().items() if r.kind == "HTTPRoute"]
        return driver.weights_of(obj)

    mesh.commit("all to v2", {ROUTE_FILE: route_yaml(0, 100)})
    plan = run("plan", *where)
    assert "this revision starts a rollout: 2 step(s) 80/20, 40/60, then 0/100, every 60s" in plan.output
    assert "HTTPRoute/bookstore/bookstore splits 'bookstore':\n    bookstore-v1     100% -> 0%" in plan.output
    assert run("apply", *where).exit_code == 0
    assert route_weights() == {"bookstore-v1": 80, "bookstore-v2": 20}
    result = run("rollout", "abort", "bookstore/bookstore", "--store", store)
    assert result.exit_code == 0 and "Aborted (aborted by hand)" in result.output, result.output
    assert route_weights() == {"bookstore-v1": 100, "bookstore-v2": 0}

    r = driver.load(backend)["bookstore/bookstore"]
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(mesh.path), str(remote)], check=True)
    branch = revert.push_revert(f"file://{remote}", r)
    shown = subprocess.run(
        ["git", "--git-dir", str(remote), "show", f"{branch}:{ROUTE_FILE}"], capture_output=True, text=True
    )
    assert shown.stdout == route_yaml(100, 0)  # the matched rule's backend has no weight to change
