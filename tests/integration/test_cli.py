"""The gitmesh command end to end, against real git repositories the tests create."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gitmesh.cli import cli
from gitmesh.objects import ObjectRef
from gitmesh.settings import embedded
from tests import factory as f
from tests.conftest import EXAMPLE_FILES, EXAMPLE_OBJECTS, EXAMPLE_REPO, GitRepo

pytestmark = pytest.mark.integration


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    """The example bookstore repo under mesh/, committed on main, plus an unrelated file."""
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore", {"README.md": "not a manifest\n", "other/app.yaml": "kind: [unrelated\n"})
    return git_repo


def managed(store: Path) -> set[str]:
    return {str(r) for r in embedded(store).objects.list()}


def test_validate_reads_the_commit_not_the_work_tree(mesh: GitRepo) -> None:
    (mesh.path / "mesh" / "bookstore" / "split.yaml").write_text("kind: [broken\n")
    result = run("validate", "--repo", mesh.path, "--ref", "main", "--path", "mesh")
    assert result.exit_code == 0, result.output
    assert f"{EXAMPLE_OBJECTS} objects valid in {len(EXAMPLE_FILES)} files" in result.output


def test_validate_reports_every_error_with_file_line_and_source_line(mesh: GitRepo) -> None:
    mesh.commit(
        "break",
        {
            "mesh/bookstore/split.yaml": (EXAMPLE_REPO / "bookstore/split.yaml")
            .read_text()
            .replace("weight: 25", "weight: -25")
            .replace("service: bookstore\n", "service: bookshop\n"),
            "mesh/bad.yaml": "a: 1\n\tb: 2\n",
        },
    )
    result = run("validate", "--repo", mesh.path, "--path", "mesh")
    assert result.exit_code == 1
    assert "mesh/bad.yaml:2:1: error GM001" in result.output
    assert "mesh/bookstore/split.yaml:13:5: error GM020 spec.backends[1].weight:" in result.output
    assert "   13 |     weight: -25" in result.output
    assert "2 error(s), 0 warning(s)" in result.output


def test_validate_json_and_github_outputs(mesh: GitRepo) -> None:
    mesh.commit(
        "break",
        {
            "mesh/x.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: bookstore}"
            "\nspec: {ports: [{port: 99999}]}\n"
        },
    )
    as_json = run("validate", "--repo", mesh.path, "--path", "mesh", "--output", "json")
    report = json.loads(as_json.output)
    assert as_json.exit_code == 1
    assert report["errors"] == 1
    (d,) = report["diagnostics"]
    assert (d["file"], d["line"], d["code"], d["path"]) == ("mesh/x.yaml", 4, "GM020", "spec.ports[0].port")
    github = run("validate", "--repo", mesh.path, "--path", "mesh", "--output", "github")
    assert github.output.startswith("::error file=mesh/x.yaml,line=4,col=")
    assert ",title=GM020::spec.ports[0].port: 99999 is greater than" in github.output


def test_gitmeshignore_excludes_paths(mesh: GitRepo) -> None:
    mesh.commit("drafts", {"mesh/bookstore/next.draft.yaml": "kind: [not yet valid\n"})
    assert run("validate", "--repo", mesh.path, "--path", "mesh").exit_code == 0
    mesh.commit("no ignore", {"mesh/.gitmeshignore": "# nothing ignored\n"})
    assert run("validate", "--repo", mesh.path, "--path", "mesh").exit_code == 1


def test_plan_apply_then_nothing_to_do(mesh: GitRepo, store: Path) -> None:
    sha = mesh.git("rev-parse", "HEAD").strip()
    planned = run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store, "--detailed-exitcode")
    assert planned.exit_code == 2
    assert f"{EXAMPLE_OBJECTS} to create, 0 to update, 0 to delete, 0 unchanged." in planned.output
    assert "bookstore-v1        - -> 75%" in planned.output
    applied = run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert applied.exit_code == 0, applied.output
    assert len(managed(store)) == EXAMPLE_OBJECTS
    again = run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store, "--detailed-exitcode")
    assert again.exit_code == 0
    assert f"No changes. {EXAMPLE_OBJECTS} objects up to date." in again.output
    status = json.loads(run("status", "--store", store, "--output", "json").output)
    (source,) = status["sources"]
    assert (source["revision"], source["ref"], sum(source["objects"].values())) == (
        sha,
        "HEAD",
        EXAMPLE_OBJECTS,
    )


def test_a_traffic_shift_plans_as_shares(mesh: GitRepo, store: Path) -> None:
    run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    split = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()
    mesh.commit("shift", {"mesh/bookstore/split.yaml": split.replace("75", "20").replace("25", "80")})
    result = run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store, "--output", "json")
    plan = json.loads(result.output)
    assert plan["summary"] == {"create": 0, "update": 1, "delete": 0, "no-op": EXAMPLE_OBJECTS - 1}
    (shift,) = plan["impact"]["splits"]
    assert [(b["service"], b["before"], b["after"]) for b in shift["backends"]] == [
        ("bookstore-v1", 75.0, 20.0),
        ("bookstore-v2", 25.0, 80.0),
    ]


def test_base_head_preview_needs_no_store(
    mesh: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = mesh.git("rev-parse", "HEAD").strip()
    mesh.remove("mesh/bookthief")
    mesh.commit("drop bookthief")
    monkeypatch.chdir(tmp_path)
    result = run(
        "plan",
        "--repo",
        mesh.path,
        "--path",
        "mesh",
        "--base",
        base,
        "--head",
        "main",
        "--output",
        "markdown",
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("### gitmesh plan for `")
    assert f"**0 to create, 0 to update, 3 to delete, {EXAMPLE_OBJECTS - 3} unchanged.**" in result.output
    assert (
        "<details><summary><code>- delete Namespace/bookthief</code> (no longer in the revision)</summary>"
        in result.output
    )
    assert not (tmp_path / ".gitmesh").exists()


def test_saved_plan_applies_exactly_and_refuses_when_stale(
    mesh: GitRepo, store: Path, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    assert (
        run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store, "--out", plan_file).exit_code
        == 0
    )
    # A newer commit lands after the plan was saved: applying the plan applies the old revision only.
    mesh.commit("later", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    assert run("apply", plan_file, "--store", store).exit_code == 0
    assert "ServiceAccount/bookstore/late" not in managed(store)
    assert len(managed(store)) == EXAMPLE_OBJECTS
    # The live state moved on: the same plan is now stale.
    stale = run("apply", plan_file, "--store", store)
    assert stale.exit_code == 1
    assert "live state changed since this plan was made" in stale.output


def test_prune_deletes_only_what_this_source_applied(mesh: GitRepo, store: Path, tmp_path: Path) -> None:
    other = GitRepo(tmp_path / "other")
    other.commit("theirs", {"ns.yaml": f.dump(f.namespace("theirs"))})
    assert run("apply", "--repo", other.path, "--store", store, "--source", "other").exit_code == 0
    run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    mesh.remove("mesh/bookthief")
    mesh.commit("drop bookthief")
    result = run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert result.exit_code == 0
    assert f"0 to create, 0 to update, 3 to delete, {EXAMPLE_OBJECTS - 3} unchanged." in result.output
    remaining = managed(store)
    assert "Namespace/bookthief" not in remaining
    assert "Namespace/theirs" in remaining


def test_deleting_everything_needs_allow_empty(mesh: GitRepo, store: Path) -> None:
    run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    mesh.remove("mesh")
    mesh.commit("empty", {"mesh/.keep.yaml": ""})
    refused = run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert refused.exit_code == 1
    assert f"would delete all {EXAMPLE_OBJECTS} objects" in refused.output
    assert len(managed(store)) == EXAMPLE_OBJECTS
    assert (
        run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store, "--allow-empty").exit_code == 0
    )
    assert managed(store) == set()


def test_an_invalid_revision_is_never_applied(mesh: GitRepo, store: Path) -> None:
    run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    good = managed(store)
    mesh.commit(
        "bad",
        {
            "mesh/bookstore/split.yaml": "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n"
            "metadata: {name: bookstore-split, namespace: bookstore}\nspec: {service: nope, backends: "
            "[{service: bookstore-v1, weight: 1}]}\n"
        },
    )
    result = run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert result.exit_code == 1
    assert "GM101" in result.output
    assert managed(store) == good
    status = run("status", "--store", store)
    assert "is invalid: 1 error(s)" in status.output


def test_remote_repositories_are_read_from_a_mirror(mesh: GitRepo, store: Path) -> None:
    url = f"file://{mesh.path}"
    assert run("validate", "--repo", url, "--ref", "main", "--path", "mesh").exit_code == 0
    mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    result = run("plan", "--repo", url, "--ref", "main", "--path", "mesh", "--store", store)
    assert f"{EXAMPLE_OBJECTS + 1} to create" in result.output  # the mirror fetched the new commit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ref", "no-such-branch"], "no commit 'no-such-branch'"),
        (["--path", "nowhere"], "path 'nowhere' does not exist"),
    ],
)
def test_bad_refs_and_paths_are_clear_errors(mesh: GitRepo, args: list[str], message: str) -> None:
    result = run("validate", "--repo", mesh.path, *args)
    assert result.exit_code == 1
    assert message in result.output


def test_explain_prints_the_code_table_entry() -> None:
    result = run("explain", "gm104")
    assert result.exit_code == 0
    assert "GM104 (error): two TrafficSplits for one root service" in result.output


def test_a_kill_mid_apply_leaves_the_store_before_or_after(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "big")
    objs = [f.namespace("big")] + [f.service_account("big", f"sa-{i}") for i in range(3000)]
    repo.commit("big", {"all.yaml": f.dump(*objs)})
    store = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outcomes = set()
    for delay in (0.0, 0.05, 0.15, 0.4):
        if store.exists():
            for p in tmp_path.glob("kill.db*"):
                p.unlink()
        with subprocess.Popen(
            [sys.executable, "-m", "gitmesh", "apply", "--repo", str(repo.path), "--store", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        ) as proc:
            assert proc.stderr is not None
            assert proc.stderr.readline().decode() == f"target: local:{store}\n"
            line = proc.stderr.readline().decode()
            assert line.startswith("Applying 3001 objects"), line
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        count = len(embedded(store).objects.list())
        inventory = embedded(store).state.inventories.get("default")
        assert (count, len(inventory)) in {(0, 0), (3001, 3001)}, (delay, count, len(inventory))
        outcomes.add(count)
    assert ObjectRef("", "Namespace", "", "big") in inventory or count == 0
    assert 0 in outcomes, "no kill landed before the commit; the test did not exercise a mid-apply kill"


def test_an_oversized_blob_is_refused_without_disturbing_the_files_after_it(mesh: GitRepo) -> None:
    big = "# filler\n" * (300 * 1024)  # about 2.8 MiB: over the limit
    mesh.commit("big", {"mesh/aaa-big.yaml": big})
    result = run("validate", "--repo", mesh.path, "--path", "mesh", "--output", "json")
    report = json.loads(result.output)
    assert [(d["file"], d["code"]) for d in report["diagnostics"]] == [("mesh/aaa-big.yaml", "GM003")]
    # Every other file still loaded intact from the same git process.
    assert (
        f"{EXAMPLE_OBJECTS} objects valid in {len(EXAMPLE_FILES) + 1} files"
        in run("validate", "--repo", mesh.path, "--path", "mesh").output
    )
    mesh.remove("mesh/aaa-big.yaml")
    mesh.commit("drop big")
    assert f"{EXAMPLE_OBJECTS} objects valid" in run("validate", "--repo", mesh.path, "--path", "mesh").output
