"""Repository layouts through the gitmesh command, from real Git commits: Kustomize overlays rendered by
the real kubectl, the default namespace, and what validate and plan print where."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import git
import pytest
from click.testing import CliRunner, Result

from gitmesh import pipeline
from gitmesh.cli import cli
from gitmesh.revision.diagnostics import CODES
from gitmesh.settings import embedded
from gitmesh.sync.source import Source, read
from tests import factory as f
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.controller import RunningController, condition
from tests.gitserver import GitHttpServer

pytestmark = pytest.mark.integration

OVERLAY = Path(__file__).resolve().parents[1] / "corpus" / "layouts" / "kustomize-overlay"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def managed(store: Path) -> dict[str, dict[str, object]]:
    return {str(ref): obj.obj for ref, obj in embedded(store).objects.list().items()}


@pytest.fixture
def overlay(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(OVERLAY, git_repo.path / "mesh")
    git_repo.commit("web, in prod by kustomize")
    return git_repo


def test_a_kustomize_overlay_is_applied_and_a_patch_change_plans_against_the_file_it_changes(
    overlay: GitRepo, tmp_path: Path
) -> None:
    store = tmp_path / "store.db"
    applied = run("apply", "--repo", overlay.path, "--path", "mesh", "--store", store)
    assert applied.exit_code == 0, applied.output
    live = managed(store)
    assert sorted(live) == [
        "Namespace/prod",
        "Service/prod/web",
        "Service/prod/web-v1",
        "Service/prod/web-v2",
        "ServiceAccount/prod/web",
        "TrafficSplit/prod/web-split",
    ]
    split = live["TrafficSplit/prod/web-split"]
    assert [b["weight"] for b in split["spec"]["backends"]] == [90, 10]  # type: ignore[index]
    assert "gitmesh.dev/written-at" not in json.dumps(live)

    canary = (overlay.path / "mesh/overlays/prod/canary.yaml").read_text()
    overlay.commit("half", {"mesh/overlays/prod/canary.yaml": canary.replace("90", "50").replace("10", "50")})
    planned = run("plan", "--repo", overlay.path, "--path", "mesh", "--store", store)
    assert planned.exit_code == 0, planned.output
    assert "~ update  TrafficSplit/prod/web-split  (mesh/base/mesh.yaml:30:1)" in planned.stdout
    assert "web-v1      90% -> 50%" in planned.stdout
    assert "0 to create, 1 to update, 0 to delete, 5 unchanged." in planned.stdout


def test_a_remote_base_refuses_the_revision_and_the_applied_one_stays(
    overlay: GitRepo, tmp_path: Path
) -> None:
    store = tmp_path / "store.db"
    assert run("apply", "--repo", overlay.path, "--path", "mesh", "--store", store).exit_code == 0
    before = managed(store)
    kustomization = (overlay.path / "mesh/overlays/prod/kustomization.yaml").read_text()
    overlay.commit(
        "remote",
        {
            "mesh/overlays/prod/kustomization.yaml": kustomization.replace(
                "- ../../base", "- ../../base\n- https://github.com/example/mesh//monitoring?ref=v1"
            )
        },
    )
    validated = run("validate", "--repo", overlay.path, "--path", "mesh")
    assert validated.exit_code == 1
    assert (
        "mesh/overlays/prod/kustomization.yaml:6:3: error GM052 resources: "
        "'https://github.com/example/mesh//monitoring?ref=v1': a remote base" in validated.stdout
    )
    refused = run("apply", "--repo", overlay.path, "--path", "mesh", "--store", store)
    assert refused.exit_code == 1
    assert managed(store) == before


def test_validate_prints_to_stdout(git_repo: GitRepo) -> None:
    git_repo.commit("bad", {"mesh/x.yaml": f.dump(f.namespace("x"), {**f.service("x", "s"), "spec": "no"})})
    result = run("validate", "--repo", git_repo.path, "--path", "mesh")
    assert result.exit_code == 1
    assert "mesh/x.yaml:11:1: error GM020 spec:" in result.stdout
    assert "1 error(s), 0 warning(s)" in result.stdout
    assert result.stderr == ""


def test_plan_json_of_a_refused_revision_is_a_document_of_its_diagnostics(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("bad", {"mesh/x.yaml": "kind: [broken\n"})
    result = run(
        "plan", "--repo", git_repo.path, "--path", "mesh", "--store", tmp_path / "s.db", "--output", "json"
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["errors"] == 1
    assert [(d["file"], d["code"]) for d in report["diagnostics"]] == [("mesh/x.yaml", "GM001")]


def test_the_git_to_git_plan_names_base_and_head(git_repo: GitRepo) -> None:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    base = git_repo.commit("bookstore")
    git_repo.remove("mesh/bookthief")
    head = git_repo.commit("no bookthief")
    args = ["plan", "--repo", git_repo.path, "--path", "mesh", "--base", base[:12], "--head", "main"]
    text = run(*args)
    assert text.exit_code == 0, text.output
    assert f"Plan for source 'default': {head[:12]} (main) -> base {base[:12]} ({base[:12]})" in text.stdout
    markdown = run(*args, "--output", "markdown")
    assert markdown.stdout.startswith(
        f"### gitmesh plan for `{head[:12]}` (main) -> base {base[:12]} ({base[:12]})"
    )


def test_the_default_namespace_goes_to_objects_that_name_none(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit(
        "no namespaces", {"mesh/web.yaml": f.dump(f.service("", "web"), f.service("other", "api"))}
    )
    without = run("validate", "--repo", git_repo.path, "--path", "mesh")
    assert without.exit_code == 1
    assert "error GM122" in without.stdout
    store = tmp_path / "store.db"
    applied = run("apply", "-n", "team", "--repo", git_repo.path, "--path", "mesh", "--store", store)
    assert applied.exit_code == 0, applied.output
    assert sorted(managed(store)) == ["Service/other/api", "Service/team/web"]
    bad = run("validate", "-n", "Team_A", "--repo", git_repo.path, "--path", "mesh")
    assert bad.exit_code == 2
    assert "'Team_A' is not a namespace name" in bad.output


def test_a_controller_source_reads_with_its_default_namespace(git_repo: GitRepo) -> None:
    """The reconciler's read of a source, with ``namespace:`` from its configuration."""
    sha = git_repo.commit("no namespace", {"mesh/web.yaml": f.dump(f.service("", "web"))})
    source = Source("mesh", str(git_repo.path), path="mesh", namespace="team")
    validated = pipeline.check(read(git.Repo(git_repo.path), source, sha, "main"))
    assert validated.ok, validated.diagnostics
    assert [str(m.ref) for m in validated.desired] == ["Service/team/web"]


def test_gitmesh_run_follows_an_overlay_over_http_and_keeps_it_when_a_remote_base_comes(
    overlay: GitRepo, tmp_path: Path
) -> None:
    """The controller renders the overlay of a source fetched over HTTP; a later commit with a remote
    base is refused by name, and what was applied stays (one source in prod by kustomize, one in
    its configured default namespace)."""
    store = tmp_path / "store.db"
    server = GitHttpServer(tmp_path / "served").start()
    bare = tmp_path / "served" / "mesh.git"
    overlay.git("clone", "-q", "--bare", str(overlay.path), str(bare))
    overlay.git("remote", "add", "origin", str(bare))
    plain = GitRepo(tmp_path / "plain")
    plain.commit("no namespace", {"web.yaml": f.dump(f.service_account("", "web"))})
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n"
        f"  - {{name: web, url: '{server.url('mesh.git')}', path: mesh, interval: 1s}}\n"
        f"  - {{name: team, url: '{plain.path}', namespace: team, interval: 1s}}\n"
    )
    c = RunningController(tmp_path, ["--config", config, "--store", store]).start()
    try:
        c.wait_applied(overlay.git("rev-parse", "HEAD").strip(), "web")
        c.wait_applied(plain.git("rev-parse", "HEAD").strip(), "team")
        applied = managed(store)
        assert "TrafficSplit/prod/web-split" in applied
        assert "ServiceAccount/team/web" in applied
        kustomization = (overlay.path / "mesh/overlays/prod/kustomization.yaml").read_text()
        remote = overlay.commit(
            "monitoring from elsewhere",
            {
                "mesh/overlays/prod/kustomization.yaml": kustomization.replace(
                    "- ../../base", "- ../../base\n- github.com/example/monitoring?ref=v2"
                )
            },
        )
        overlay.git("push", "-q", "origin", "main")
        record = c.wait_result(remote, "invalid", "web")
        assert condition(record, "Stalled") == ("True", "ValidationFailed")
        (stalled,) = [x for x in record["conditions"] if x["type"] == "Stalled"]
        assert "GM052" in stalled["message"]
        assert "a remote base" in stalled["message"]
        assert managed(store) == applied
    finally:
        assert c.stop() == 0
        server.stop()


def test_explain_prints_every_explanation_as_written() -> None:
    """Explanations quote patterns such as '[z-a]': printed as text, not taken for markup."""
    for code, entry in CODES.items():
        result = run("explain", code)
        assert result.exit_code == 0
        assert entry.explanation in result.stdout, code


def test_a_bad_gitmeshignore_line_is_quoted_and_the_revision_is_not_applied(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit(
        "ignore", {"mesh/.gitmeshignore": "drafts/\n[z-a]\n", "mesh/web.yaml": f.dump(f.service("x", "web"))}
    )
    result = run("apply", "--repo", git_repo.path, "--path", "mesh", "--store", tmp_path / "s.db")
    assert result.exit_code == 1
    assert "mesh/.gitmeshignore:2:1: error GM050 '[z-a]' is not a valid gitignore pattern" in result.output
    assert "    2 | [z-a]" in result.output
    assert not (tmp_path / "s.db").exists() or managed(tmp_path / "s.db") == {}


def test_a_file_of_200000_documents_is_refused_by_name_not_planned_as_no_changes(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit(
        "many", {"mesh/web.yaml": f.dump(f.service("x", "web")), "mesh/many.yaml": "---\n" * 200_000}
    )
    result = run("plan", "--repo", git_repo.path, "--path", "mesh", "--store", tmp_path / "s.db")
    assert result.exit_code == 1
    assert "mesh/many.yaml:1:1: error GM009 more than 10,000 documents; none of them is used" in result.output
    assert "No changes" not in result.output
