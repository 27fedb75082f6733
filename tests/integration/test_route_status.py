"""Route status written back: in the embedded store by gitmesh apply, and in a real kube-apiserver (its
status subresource, read back with kubectl) for gitmesh's routes and for routes someone else made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gitmesh import pipeline
from gitmesh.apis.route_status import CONTROLLER_NAME
from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.settings import Settings, embedded, kubernetes
from tests import factory as f
from tests.conftest import GitRepo
from tests.controller import RunningController
from tests.kube import Cluster

pytestmark = pytest.mark.integration

NS = "shop"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def http_service(name: str) -> dict[str, Any]:
    svc = f.service(NS, name, 80)
    svc["spec"]["ports"][0]["name"] = "http"
    return svc


def route(name: str, backends: list[str]) -> dict[str, Any]:
    obj = f.http_route(NS, name, "reviews", dict.fromkeys(backends, 1))
    obj["spec"]["parentRefs"][0]["port"] = 80
    return obj


def mesh(tmp_path: Path, *routes: dict[str, Any]) -> Path:
    directory = tmp_path / "mesh"
    directory.mkdir(exist_ok=True)
    objects = [f.namespace(NS), *(http_service(n) for n in ("reviews", "reviews-v1", "reviews-v2")), *routes]
    (directory / "mesh.yaml").write_text(f.dump(*objects))
    return directory


def ours(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in obj["status"]["parents"] if e["controllerName"] == CONTROLLER_NAME]


def verdict(entry: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}


ACCEPTED = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_the_embedded_store_keeps_route_status_and_plan_and_status_show_it(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    directory = mesh(tmp_path, route("reviews", ["reviews-v1", "reviews-v2"]))
    planned = run("plan", directory, "--store", store, "-o", "json")
    assert planned.exit_code == 0, planned.output
    (line,) = json.loads(planned.stdout)["routes"]
    assert line["parent"] == "shop/reviews:80"
    assert (line["accepted"], line["resolved_refs"]) == (True, True)
    assert run("apply", directory, "--store", store).exit_code == 0

    shown = run("status", "--store", store, "-o", "json")
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.stdout)["routes"]
    assert row["route"] == "HTTPRoute/shop/reviews"
    assert (row["accepted_reason"], row["resolved_refs_reason"]) == ("Accepted", "ResolvedRefs")
    text = run("status", "--store", store)
    assert "HTTPRoute/shop/reviews on Service shop/reviews:80: Accepted, ResolvedRefs" in text.stdout

    # Applying the route again (a new weight) keeps its status, at the route's new generation.
    settings = pipeline_settings(store)
    (live,) = [o.obj for r, o in settings.objects.list().items() if r.kind == "HTTPRoute"]
    assert live["metadata"]["generation"] == 1
    assert {c["observedGeneration"] for c in ours(live)[0]["conditions"]} == {1}
    changed = route("reviews", ["reviews-v1", "reviews-v2"])
    changed["spec"]["rules"][0]["backendRefs"][0]["weight"] = 3
    mesh(tmp_path, changed)
    assert json.loads(run("plan", directory, "--store", store, "-o", "json").stdout)["routes"] == []
    assert run("apply", directory, "--store", store).exit_code == 0
    (live,) = [o.obj for r, o in pipeline_settings(store).objects.list().items() if r.kind == "HTTPRoute"]
    assert live["metadata"]["generation"] == 2
    assert {c["observedGeneration"] for c in ours(live)[0]["conditions"]} == {2}


def pipeline_settings(store: Path) -> Settings:
    return embedded(store, create=False)


def test_route_status_is_written_to_the_status_subresource_keeping_other_controllers(
    crd_cluster: Cluster, tmp_path: Path
) -> None:
    directory = mesh(tmp_path, route("reviews", ["reviews-v1", "reviews-v2"]))
    applied = run("apply", directory, "--kubeconfig", crd_cluster.kubeconfig)
    assert applied.exit_code == 0, applied.output
    got = json.loads(
        crd_cluster.kubectl(
            "get", "httproute", "-n", NS, "reviews", "-o", "json", "--show-managed-fields"
        ).stdout
    )
    (entry,) = ours(got)
    assert entry["parentRef"] == {"group": "", "kind": "Service", "name": "reviews", "port": 80}
    assert verdict(entry) == ACCEPTED
    assert {c["observedGeneration"] for c in entry["conditions"]} == {got["metadata"]["generation"]}
    by = {(m["manager"], m.get("subresource", "")) for m in got["metadata"]["managedFields"]}
    assert ("gitmesh", "status") in by

    # Someone else's route, made with kubectl, naming a backend that does not exist, with another
    # controller's entry in its status: gitmesh's pass writes its own entry beside that one.
    foreign = route("ratings", ["reviews-v1", "reviews-v9"])
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    crd_cluster.kubectl("apply", "-f", str(tmp_path / "foreign.json"))
    other = {
        "parentRef": {"name": "edge"},
        "controllerName": "example.net/gateway-controller",
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "taken",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    patch = json.dumps({"status": {"parents": [other]}})
    crd_cluster.kubectl(
        "patch", "httproute", "-n", NS, "ratings", "--subresource=status", "--type=merge", "-p", patch
    )
    get = ("get", "httproute", "-n", NS, "ratings", "-o", "json")
    before = json.loads(crd_cluster.kubectl(*get).stdout)["status"]["parents"]  # as the server defaulted it
    settings = kubernetes(str(crd_cluster.kubeconfig))
    watched = settings.objects.watch()
    try:
        assert pipeline.write_route_status(settings, (o.obj for o in watched.list().values())) == 1
    finally:
        watched.stop()
    got = json.loads(crd_cluster.kubectl(*get).stdout)
    assert got["status"]["parents"][0] == before[0]
    (entry,) = ours(got)
    assert verdict(entry) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert "shop/reviews-v9" in entry["conditions"][1]["message"]


def test_gitmesh_run_keeps_the_status_of_routes_anyone_makes(
    crd_cluster: Cluster, git_repo: GitRepo, tmp_path: Path
) -> None:
    objects = [f.namespace(NS), *(http_service(n) for n in ("reviews", "reviews-v1", "reviews-v2"))]
    git_repo.commit("the shop's services", {"mesh/shop.yaml": f.dump(*objects)})
    args = (
        "--repo",
        git_repo.path,
        "--path",
        "mesh",
        "--kubeconfig",
        crd_cluster.kubeconfig,
        "--interval",
        "1s",
    )
    controller = RunningController(tmp_path, args).start()
    try:
        controller.wait_applied(git_repo.git("rev-parse", "HEAD").strip())
        # A route made with kubectl (as Gateway API's conformance suite makes them), to a backend
        # no one has made yet; then the backend appears.
        (tmp_path / "ratings.json").write_text(json.dumps(route("ratings", ["reviews-v1", "reviews-v9"])))
        crd_cluster.kubectl("apply", "-f", str(tmp_path / "ratings.json"))

        def said() -> dict[str, tuple[str, str]]:
            got = json.loads(
                crd_cluster.kubectl("get", "httproute", "-n", NS, "ratings", "-o", "json").stdout
            )
            entries = ours(got) if got.get("status") else []
            return verdict(entries[0]) if entries else {}

        not_found = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
        eventually(said, lambda v: v == not_found, "the route's status naming the missing backend")
        (tmp_path / "v9.json").write_text(json.dumps(http_service("reviews-v9")))
        crd_cluster.kubectl("apply", "-f", str(tmp_path / "v9.json"))
        eventually(said, lambda v: v == ACCEPTED, "the route's status once the backend exists")
        assert controller.stop() == 0
    finally:
        if controller.process and controller.process.poll() is None:
            controller.kill()
