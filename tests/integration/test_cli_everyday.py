"""The everyday command line as a person meets it: where a command writes, what it refuses, what it
notes, and its JSON, each against real Git repositories and a real embedded store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result

from gitmesh.cli import cli
from tests import factory as f
from tests.conftest import EXAMPLE_REPO, GitRepo

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "gitmesh" / "cli" / "schemas"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def conforms(result: Result, kind: str) -> dict[str, Any]:
    """The command's stdout, parsed and validated against its documented schema."""
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["kind"] == kind
    return doc


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    return git_repo


def test_plan_and_apply_name_their_target_first(mesh: GitRepo, store: Path) -> None:
    planned = run(
        "plan", "--repo", mesh.path, "--path", "mesh", "--store", store, "--out", store.parent / "p"
    )
    assert planned.stderr.startswith(f"target: local:{store}\n"), planned.stderr
    applied = run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert applied.stderr.startswith(f"target: local:{store}\n"), applied.stderr


def test_read_only_commands_create_no_store(mesh: GitRepo, store: Path) -> None:
    for args in (
        ["status"],
        ["history"],
        ["history", "default"],
        ["rollout", "status"],
        ["plan", "--repo", str(mesh.path), "--path", "mesh"],
    ):
        result = run(*args, "--store", store)
        assert result.exit_code == 0, (args, result.output)
        assert not store.exists(), args
    assert "Nothing applied yet" in run("status", "--store", store).output


def test_the_default_store_is_per_repository_else_per_user(
    mesh: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(mesh.path / "mesh" / "bookstore")
    assert run("status").stderr.startswith(f"target: local:{mesh.path / '.gitmesh' / 'store.db'}\n")
    assert run("apply", "--repo", mesh.path, "--path", "mesh").exit_code == 0
    assert (mesh.path / ".gitmesh" / "store.db").exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # tmp_path's parents hold no repo
    assert run("status").stderr.startswith(f"target: local:{tmp_path / 'state' / 'gitmesh' / 'store.db'}\n")


def test_a_directory_is_recorded_by_its_content_not_as_a_commit(mesh: GitRepo, store: Path) -> None:
    applied = run("apply", mesh.path / "mesh", "--store", store)
    assert applied.exit_code == 0, applied.output
    assert "is not a commit; recording it as sha256:" in applied.stderr
    status = run("status", "--store", store)
    (line,) = [x for x in status.stdout.splitlines() if x.strip().startswith("revision")]
    assert "sha256:" in line and line.endswith("(not a commit)"), line
    again = run("plan", mesh.path / "mesh", "--store", store, "-o", "json")
    assert json.loads(again.stdout)["revision"] == line.split()[1]  # the same content, the same name


def test_uncommitted_changes_are_noted(mesh: GitRepo, store: Path) -> None:
    clean = run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert "uncommitted changes" not in clean.stderr
    split = mesh.path / "mesh" / "bookstore" / "split.yaml"
    split.write_text(split.read_text().replace("weight: 75", "weight: 70"))
    dirty = run("plan", "--repo", mesh.path, "--path", "mesh", "--store", store)
    assert f"{mesh.path} has uncommitted changes; this reads its commit HEAD, without them" in dirty.stderr


def _two_sources(repo: GitRepo, store: Path, tmp_path: Path, annotations: dict[str, str]) -> None:
    """Source default owns Namespace shop and one account in it; source other put one more there."""
    ns = f.namespace("shop")
    ns["metadata"]["annotations"] = annotations
    repo.commit("shop", {"shop.yaml": f.dump(ns, f.service_account("shop", "mine"))})
    assert run("apply", "--repo", repo.path, "--store", store).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "theirs.yaml").write_text(f.dump(f.service_account("shop", "theirs")))
    assert run("apply", other, "--source", "other", "--store", store).exit_code == 0
    repo.remove("shop.yaml")
    repo.commit("no more shop", {"keep.yaml": f.dump(f.namespace("kept"))})


def test_deleting_a_namespace_that_holds_others_objects_is_refused(
    git_repo: GitRepo, store: Path, tmp_path: Path
) -> None:
    _two_sources(git_repo, store, tmp_path, {})
    planned = run("plan", "--repo", git_repo.path, "--store", store)
    assert "Deleting Namespace/shop also deletes: ServiceAccount/shop/theirs" in planned.stdout
    refused = run("apply", "--repo", git_repo.path, "--store", store)
    assert refused.exit_code == 1
    assert "Namespace/shop holds 1: ServiceAccount/shop/theirs" in refused.output
    assert "gitmesh.io/delete-with-contents" in refused.output
    status = json.loads(run("status", "--store", store, "-o", "json").stdout)
    assert {s["source"]: s["objects"] for s in status["sources"]}["default"] == {
        "Namespace": 1,
        "ServiceAccount": 1,
    }  # nothing was deleted
    forced = run("apply", "--repo", git_repo.path, "--store", store, "--delete-namespace-contents")
    assert forced.exit_code == 0, forced.output


def test_a_namespace_marked_to_go_with_its_contents_is_deleted(
    git_repo: GitRepo, store: Path, tmp_path: Path
) -> None:
    _two_sources(git_repo, store, tmp_path, {"gitmesh.io/delete-with-contents": "true"})
    applied = run("apply", "--repo", git_repo.path, "--store", store)
    assert applied.exit_code == 0, applied.output
    assert "Deleting Namespace/shop also deletes: ServiceAccount/shop/theirs" in applied.stderr


def test_unknown_sources_are_refused_and_their_history_is_empty(mesh: GitRepo, store: Path) -> None:
    assert run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store).exit_code == 0
    refused = run("suspend", "defualt", "--store", store)
    assert refused.exit_code == 1
    assert "no source 'defualt'" in refused.output and "known: default" in refused.output
    assert run("suspend", "default", "--store", store).exit_code == 0
    assert run("resume", "nope", "--store", store).exit_code == 1
    empty = conforms(run("history", "nope", "--store", store, "-o", "json"), "history")
    assert empty["sources"] == []


def test_json_outputs_follow_their_schemas(mesh: GitRepo, store: Path) -> None:
    applied = conforms(
        run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store, "-o", "json"), "apply"
    )
    assert applied["counts"]["create"] > 0 and applied["target"] == f"local:{store}"
    status = conforms(run("status", "--store", store, "-o", "json"), "status")
    assert status["sources"][0]["source"] == "default"
    conforms(run("history", "--store", store, "-o", "json"), "history")
    conforms(run("rollout", "status", "--store", store, "-o", "json"), "rollouts")
    explained = conforms(run("explain", "GM104", "-o", "json"), "explanation")
    assert explained["code"] == "GM104"
    validated = conforms(run("validate", "--repo", mesh.path, "--path", "mesh", "-o", "json"), "diagnostics")
    assert validated["errors"] == 0
    as_yaml = yaml.safe_load(run("status", "--store", store, "-o", "yaml").stdout)
    assert as_yaml == status


def test_status_counts_one_namespace_with_n(mesh: GitRepo, store: Path) -> None:
    assert run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store).exit_code == 0
    every = conforms(run("status", "--store", store, "-o", "json"), "status")["sources"][0]["objects"]
    one = conforms(run("status", "--store", store, "-n", "bookbuyer", "-o", "json"), "status")
    assert one["namespace"] == "bookbuyer"
    counted = one["sources"][0]["objects"]
    assert 0 < sum(counted.values()) < sum(every.values())
    assert counted == {"ServiceAccount": 1, "Service": 1}  # the Namespace itself is cluster-scoped
    assert "TrafficSplit" not in counted  # the splits live in bookstore
    text = run("status", "--store", store, "-n", "nowhere").stdout
    assert "objects in nowhere 0" in text, text


def test_explain_suggests_the_nearest_code() -> None:
    result = run("explain", "GM-104")
    assert result.exit_code == 2
    assert "did you mean GM104?" in result.output


def test_validate_without_a_path_in_a_huge_tree_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2001):
        (tmp_path / f"{i}.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    result = run("validate")
    assert result.exit_code == 2
    assert "give the DIRECTORY of the manifests" in result.output


def test_a_preview_against_an_invalid_base_says_so_first(mesh: GitRepo) -> None:
    good = mesh.git("rev-parse", "HEAD").strip()
    split = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()
    broken = mesh.commit("break", {"mesh/bookstore/split.yaml": split.replace("weight: 25", "weight: -25")})
    mesh.commit("fix and shift", {"mesh/bookstore/split.yaml": split.replace("75", "70").replace("25", "30")})
    preview = [
        "plan",
        "--repo",
        mesh.path,
        "--path",
        "mesh",
        "--base",
        broken,
        "--head",
        "main",
        "-o",
        "markdown",
    ]
    result = run(*preview)
    assert result.exit_code == 0, result.output
    first, _, rest = result.stdout.partition("\n")
    assert first.startswith(f"> **Warning:** the base {broken} ({broken[:12]}) is invalid (1 error(s))"), (
        first
    )
    assert f"its last valid state, {good[:12]} ({broken}~1)" in first
    assert f"-> base {good[:12]} ({broken}~1)" in rest  # the header names base and head
    assert "**0 to create, 1 to update, 0 to delete" in rest  # only the shift, not the whole mesh


def test_a_preview_against_a_base_with_no_valid_state_plans_against_an_empty_mesh(git_repo: GitRepo) -> None:
    broken = git_repo.commit("broken", {"a.yaml": "kind: [broken\n"})
    git_repo.commit("fixed", {"a.yaml": f.dump(f.namespace("a"))})
    result = run("plan", "--repo", git_repo.path, "--base", broken, "--head", "main", "-o", "markdown")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"> **Warning:** the base {broken} ({broken[:12]}) is invalid")
    assert "has no valid state before it; planned against an empty mesh" in result.stdout.partition("\n")[0]
    assert "**1 to create, 0 to update, 0 to delete" in result.stdout


def test_applies_by_hand_are_in_history_and_conditions(mesh: GitRepo, store: Path) -> None:
    sha = mesh.git("rev-parse", "HEAD").strip()
    assert run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store).exit_code == 0
    assert run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store).exit_code == 0
    split = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()
    bad = mesh.commit("break", {"mesh/bookstore/split.yaml": split.replace("weight: 25", "weight: -25")})
    assert run("apply", "--repo", mesh.path, "--path", "mesh", "--store", store).exit_code == 1
    history = conforms(run("history", "default", "--store", store, "-o", "json"), "history")
    (record,) = history["sources"]
    assert [(h["revision"], h["result"], h["trigger"]) for h in record["history"]] == [
        (bad, "invalid", "cli"),
        (sha, "unchanged", "cli"),
        (sha, "applied", "cli"),
    ]
    assert record["last_applied_revision"] == sha
    ready = next(c for c in record["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ValidationFailed")


def test_a_missing_context_is_named_with_its_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "staging", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "staging",
            }
        )
    )
    result = run("status", "--kubeconfig", kubeconfig, "--context", "prod")
    assert result.exit_code == 1
    assert f"cannot load context 'prod' from kubeconfig {kubeconfig}" in result.output
