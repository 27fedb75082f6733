"""A fleet on real parts: a hub and two member clusters (each its own kube-apiserver), a real Git
repository with a base and an EU overlay, and one ``gitmesh run --fleet-hub`` agent process per
member, each with the credentials ``gitmesh fleet join`` made for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.fleet.hub import Hub
from gitmesh.kube import errors
from gitmesh.kube.client import Client
from tests import factory as f
from tests.conftest import GitRepo
from tests.controller import RunningController
from tests.kube import Cluster

# Three apiservers and two agent processes per test, walked through several states: more than the
# default two minutes when the machine is busy.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEMAS = Path(__file__).parents[2] / "gitmesh" / "cli" / "schemas"
NS = "shop"
BASE = [
    f.namespace(NS),
    f.service_account(NS, "web"),
    f.service(NS, "web"),
    f.service(NS, "web-v1"),
    f.service(NS, "web-v2"),
    f.split(NS, "web-split", "web", {"web-v1": 100, "web-v2": 0}),
]


def _eu_overlay(v2: int) -> dict[str, str]:
    canary = f.split(NS, "web-split", "web", {"web-v1": 100 - v2, "web-v2": v2})
    return {
        "fleet/eu/kustomization.yaml": yaml.safe_dump(
            {"resources": ["../base"], "patches": [{"path": "canary.yaml"}]}
        ),
        "fleet/eu/canary.yaml": f.dump(canary),
    }


def _cli(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def fleet(
    add_kube_cluster: Callable[..., Cluster], git_repo: GitRepo, tmp_path: Path
) -> Iterator[tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo]]:
    """The hub with one configuration (the base, and fleet/eu for region=eu), members eu-1 and us-1
    joined and each followed by its agent."""
    git_repo.commit(
        "base and the EU overlay",
        {
            "fleet/base/kustomization.yaml": yaml.safe_dump({"resources": ["mesh.yaml"]}),
            "fleet/base/mesh.yaml": f.dump(*BASE),
            **_eu_overlay(10),
        },
    )
    hub = add_kube_cluster()
    members = {"eu-1": add_kube_cluster(), "us-1": add_kube_cluster()}
    agents: dict[str, RunningController] = {}
    try:
        assert "fleetclusters.gitmesh.dev established" in _cli(
            "install", "fleet-hub", "--kubeconfig", hub.kubeconfig
        )
        configuration = {
            "apiVersion": "gitmesh.dev/v1alpha1",
            "kind": "FleetConfiguration",
            "metadata": {"name": "mesh", "namespace": "gitmesh-fleet"},
            "spec": {
                "repository": str(git_repo.path),
                "ref": {"branch": "main"},
                "path": "fleet/base",
                "interval": "1s",
                "overlays": [{"path": "fleet/eu", "clusterSelector": {"matchLabels": {"region": "eu"}}}],
            },
        }
        hub.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        for name, member in members.items():
            _cli("install", "crds", "--kubeconfig", member.kubeconfig)
            credentials = tmp_path / f"{name}.hub.kubeconfig"
            region = name.split("-")[0]
            _cli(
                "fleet",
                "join",
                name,
                "-l",
                f"region={region}",
                "--unknown-after",
                "5s",
                "--out",
                credentials,
                "--kubeconfig",
                hub.kubeconfig,
            )
            workdir = tmp_path / name
            workdir.mkdir()
            agents[name] = RunningController(
                workdir,
                [
                    "--fleet-hub",
                    credentials,
                    "--fleet-cluster",
                    name,
                    "--kubeconfig",
                    member.kubeconfig,
                    "--fleet-report-interval",
                    "1s",
                ],
            ).start()
        yield hub, members, agents, git_repo
        for agent in agents.values():
            if agent.process and agent.process.poll() is None:
                assert agent.stop() == 0, agent.log.read_text()
    finally:
        for agent in agents.values():
            if agent.process and agent.process.poll() is None:
                agent.kill()
        for cluster in (hub, *members.values()):
            cluster.stop()


def status(hub: Cluster) -> dict[str, dict[str, Any]]:
    doc = json.loads(_cli("fleet", "status", "-o", "json", "--kubeconfig", hub.kubeconfig))
    jsonschema.validate(doc, json.loads((SCHEMAS / "fleet-status.schema.json").read_text()))
    return {c["name"]: c for c in doc["clusters"]}


def weights(member: Cluster) -> list[int]:
    split = json.loads(member.kubectl("get", "trafficsplit", "-n", NS, "web-split", "-o", "json").stdout)
    return [b["weight"] for b in split["spec"]["backends"]]


def services(member: Cluster) -> set[str]:
    found = json.loads(member.kubectl("get", "services", "-n", NS, "-o", "json").stdout)
    return {s["metadata"]["name"] for s in found["items"]}


def restart(agents: dict[str, RunningController]) -> None:
    """Each agent stops on a new assignment (exit 3) and is started again on it."""
    for agent in agents.values():
        assert agent.process is not None
        assert agent.process.wait(30) == 3, agent.log.read_text()
        agent.start()


def all_compliant_at(head: str) -> Callable[[dict[str, dict[str, Any]]], bool]:
    def check(clusters: dict[str, dict[str, Any]]) -> bool:
        return all(
            c["compliance"] == "Compliant" and c["configurations"][0]["applied_revision"] == head
            for c in clusters.values()
        )

    return check


def test_a_fleet_rolls_out_reports_compliance_and_notices_a_silent_agent(
    fleet: tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo], tmp_path: Path
) -> None:
    hub, members, agents, repo = fleet
    head = repo.git("rev-parse", "HEAD").strip()

    # First rollout: every member Compliant at the head, each with its overlay.
    clusters = eventually(lambda: status(hub), all_compliant_at(head), "every member Compliant", timeout=60)
    assert clusters["eu-1"]["configurations"][0]["path"] == "fleet/eu"
    assert clusters["us-1"]["configurations"][0]["path"] == "fleet/base"
    assert clusters["eu-1"]["labels"] == {"region": "eu"}
    assert weights(members["eu-1"]) == [90, 10]
    assert weights(members["us-1"]) == [100, 0]
    table = _cli("fleet", "status", "--kubeconfig", hub.kubeconfig)
    assert "eu-1" in table and "us-1" in table and "Compliant" in table

    # An agent's credentials write its own status and nobody else's.
    own = Hub(Client.connect(str(tmp_path / "eu-1.hub.kubeconfig")))
    with pytest.raises(errors.Forbidden):
        own.report("us-1", {"compliance": "Compliant"})
    with pytest.raises(errors.Forbidden):
        own.client.request(
            "DELETE", "/apis/gitmesh.dev/v1alpha1/namespaces/gitmesh-fleet/fleetconfigurations/mesh"
        )

    # A plan per member for a branch not merged yet: the EU canary moves to 20%, everyone gets web-v3.
    repo.git("checkout", "-q", "-b", "next")
    repo.commit(
        "web-v3 and a 20% EU canary",
        {"fleet/base/mesh.yaml": f.dump(*BASE, f.service(NS, "web-v3")), **_eu_overlay(20)},
    )
    repo.git("checkout", "-q", "main")
    doc = json.loads(
        _cli(
            "fleet",
            "plan",
            "mesh",
            "--ref",
            "next",
            "--repo",
            repo.path,
            "-o",
            "json",
            "--kubeconfig",
            hub.kubeconfig,
        )
    )
    jsonschema.validate(doc, json.loads((SCHEMAS / "fleet-plan.schema.json").read_text()))
    plans = {p["name"]: p for p in doc["clusters"]}
    assert {p["base_revision"] for p in plans.values()} == {head}
    assert plans["us-1"]["changes"] == [{"action": "create", "object": "Service/shop/web-v3"}]
    assert plans["us-1"]["splits"] == []
    assert {"action": "update", "object": "TrafficSplit/shop/web-split"} in plans["eu-1"]["changes"]
    ((split,),) = [p["splits"] for p in plans.values() if p["splits"]]
    assert [(b["before"], b["after"]) for b in split["backends"]] == [(90, 80), (10, 20)]
    markdown = _cli(
        "fleet",
        "plan",
        "mesh",
        "--ref",
        "next",
        "--repo",
        repo.path,
        "-o",
        "markdown",
        "--kubeconfig",
        hub.kubeconfig,
    )
    assert "| eu-1 | `fleet/eu` |" in markdown and "web-v2 10% -> 20%" in markdown

    # A commit that breaks only the EU overlay: eu-1 Non-Compliant with the reason and nothing of
    # the commit applied there; us-1 takes all of it.
    broken = repo.commit(
        "web-v3 for everyone, and a broken EU canary",
        {"fleet/base/mesh.yaml": f.dump(*BASE, f.service(NS, "web-v3")), **_eu_overlay(-10)},
    )
    clusters = eventually(
        lambda: status(hub),
        lambda c: (
            c["eu-1"]["compliance"] == "Non-Compliant"
            and c["eu-1"]["configurations"][0]["desired_revision"] == broken
            and c["us-1"]["configurations"][0]["applied_revision"] == broken
        ),
        "eu-1 Non-Compliant, us-1 at the new head",
        timeout=60,
    )
    eu = clusters["eu-1"]["configurations"][0]
    assert (eu["desired_revision"], eu["applied_revision"]) == (broken, head)
    assert "GM020" in eu["reason"] and "spec.backends[1].weight" in eu["reason"], eu["reason"]
    # Per object: the one that failed, and why.
    (invalid,) = eu["object_results"]
    assert (invalid["object"], invalid["result"]) == ("TrafficSplit/shop/web-split", "invalid")
    assert "fleet/base/mesh.yaml" in invalid["message"] and "kustomize in fleet/eu" in invalid["message"], (
        invalid
    )
    us = clusters["us-1"]["configurations"][0]
    assert {"object": "Service/shop/web-v3", "result": "created"} in us["object_results"]
    detail = _cli("fleet", "status", "eu-1", "--kubeconfig", hub.kubeconfig)
    assert "TrafficSplit/shop/web-split" in detail and "invalid" in detail and "us-1" not in detail
    assert clusters["us-1"]["compliance"] == "Compliant"
    assert "web-v3" in services(members["us-1"])
    assert "web-v3" not in services(members["eu-1"])  # nothing half-applied
    assert weights(members["eu-1"]) == [90, 10]  # the last good revision stays

    # Suspended on the member itself: the hub hears it.
    _cli("suspend", "mesh", "--kubeconfig", members["us-1"].kubeconfig)
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Suspended", "us-1 Suspended")
    _cli("resume", "mesh", "--kubeconfig", members["us-1"].kubeconfig)
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Compliant", "us-1 Compliant again")

    # Git out of reach: both report it, and each keeps what it had applied.
    moved = repo.path.rename(repo.path.with_name("moved"))
    clusters = eventually(
        lambda: status(hub),
        lambda c: c["us-1"]["compliance"] == "Non-Compliant",
        "us-1 Non-Compliant without Git",
    )
    assert clusters["us-1"]["configurations"][0]["applied_revision"] == broken
    assert "web-v3" in services(members["us-1"]) and weights(members["eu-1"]) == [90, 10]
    moved.rename(repo.path)
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Compliant", "us-1 back with Git")

    # An agent killed: its cluster reads Unknown once its unknownAfter (5s) has passed.
    agents["us-1"].kill()
    clusters = eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Unknown", "us-1 Unknown")
    assert clusters["us-1"]["reason"].startswith("no report for")
    assert clusters["eu-1"]["compliance"] == "Non-Compliant"  # its agent still reports

    # The hub assigns eu-1 something else (the base): its agent stops, to be started on it (exit 3).
    hub.kubectl(
        "-n",
        "gitmesh-fleet",
        "patch",
        "fleetconfiguration",
        "mesh",
        "--type=merge",
        "-p",
        '{"spec": {"overlays": []}}',
    )
    assert agents["eu-1"].process is not None
    assert agents["eu-1"].process.wait(30) == 3, agents["eu-1"].log.read_text()


def test_members_go_on_without_the_hub_and_refused_credentials_stop_an_agent(
    fleet: tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo], tmp_path: Path
) -> None:
    hub, members, agents, repo = fleet
    head = repo.git("rev-parse", "HEAD").strip()
    eventually(lambda: status(hub), all_compliant_at(head), "every member Compliant", timeout=60)

    # A configuration whose name no member could keep its records under is refused by the hub.
    unusable = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "FleetConfiguration",
        "metadata": {"name": "mesh.eu", "namespace": "gitmesh-fleet"},
        "spec": {"repository": "r"},
    }
    refused_name = hub.kubectl("apply", "-f", "-", input=json.dumps(unusable), check=False)
    assert refused_name.returncode != 0 and "metadata.name" in refused_name.stderr, refused_name.stderr

    # Credentials the hub does not accept: the agent says so and exits, rather than serve nothing.
    bad = hub.kubeconfig_for(tmp_path / "bad", "not-a-token")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitmesh",
            "run",
            "--fleet-hub",
            bad,
            "--fleet-cluster",
            "eu-1",
            "--kubeconfig",
            members["eu-1"].kubeconfig,
            "--xds-address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
    )
    assert refused.returncode == 1, refused.stderr
    assert "error: 401 Unauthorized" in refused.stderr

    # A second configuration declaring one of the first one's objects: each agent, started again on
    # the new assignment (exit 3, as a Deployment restarts it), reports the overlap; the object stays
    # as the first configuration applied it, and nothing else of the second is applied.
    intruder = f.service(NS, "web-v1", 9090)
    repo.commit("extra", {"fleet/extra/mesh.yaml": f.dump(intruder, f.service(NS, "extra-only"))})
    extra = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "FleetConfiguration",
        "metadata": {"name": "extra", "namespace": "gitmesh-fleet"},
        "spec": {"repository": str(repo.path), "path": "fleet/extra", "interval": "1s"},
    }
    hub.kubectl("apply", "-f", "-", input=json.dumps(extra))
    restart(agents)
    clusters = eventually(
        lambda: status(hub),
        lambda c: all(m.get("overlaps") for m in c.values()),
        "every member reporting the overlap",
        timeout=60,
    )
    for name, member in members.items():
        assert clusters[name]["overlaps"] == [
            {"object": "Service/shop/web-v1", "applied_by": "mesh", "refused_to": "extra"}
        ]
        assert clusters[name]["reason"].startswith("overlapping configurations: mesh and extra"), clusters[
            name
        ]
        assert "extra-only" not in services(member)
        live = json.loads(member.kubectl("get", "service", "-n", NS, "web-v1", "-o", "json").stdout)
        assert [p["port"] for p in live["spec"]["ports"]] != [9090]
    hub.kubectl("-n", "gitmesh-fleet", "delete", "fleetconfiguration", "extra")
    restart(agents)
    eventually(lambda: status(hub), lambda c: not any(m.get("overlaps") for m in c.values()), "no overlap")

    # The hub gone: the agents go on following Git.
    hub.stop()
    repo.commit("web-v3", {"fleet/base/mesh.yaml": f.dump(*BASE, f.service(NS, "web-v3"))})
    for member in members.values():
        eventually(lambda m=member: services(m), lambda s: "web-v3" in s, "web-v3 applied without the hub")
    assert all(a.process is not None and a.process.poll() is None for a in agents.values())
