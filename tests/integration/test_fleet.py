"""A fleet on real parts: a hub and four member clusters (each its own kube-apiserver), a real Git
repository served over HTTP with a base and an EU overlay, and one ``gitmesh run --fleet-hub`` agent
process per member, each with the credentials ``gitmesh fleet join`` made for it. The canary eu-1's
agent serves real Envoy sidecars (``Canary``: web-v1, web-v2 and a caller sending them requests)
and judges its mesh health from their stats; the others read theirs from a real Prometheus
(Debian's) scraping Envoy's metric names from an exporter that stays healthy (``MeshMetrics``). With
``$FLEET_TIMELINE`` set, the wave test writes its waves' timeline there as SVG (the README's
docs/fleet-wave.svg), and with ``$FLEET_STATUS_SAMPLE`` the ``fleet status`` table it reads while a
stage waits for approval."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from gitmesh import settings
from gitmesh.certs import store
from gitmesh.certs.authority import CaState
from gitmesh.cli import cli
from gitmesh.demo import App, Sidecar, call, endpoint_slice, eventually, free_port, stop_process
from gitmesh.fleet.hub import Hub
from gitmesh.fleet.timeline import render as render_timeline
from gitmesh.kube import errors
from gitmesh.kube.client import Client
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.xds.bootstrap import client_tls
from gitmesh.xds.translate import Proxy
from tests import factory as f
from tests.conftest import GitRepo
from tests.controller import RunningController
from tests.gitserver import GitHttpServer
from tests.kube import Cluster

# Five apiservers, four agent processes and two Prometheus per test, walked through several states:
# more than the default two minutes when the machine is busy.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SCHEMAS = Path(__file__).parents[2] / "gitmesh" / "cli" / "schemas"
NS = "shop"


def _http_service(name: str) -> dict[str, Any]:
    service = f.service(NS, name)
    service["spec"]["ports"] = [{"name": "http", "port": 80}]
    return service


BASE = [
    f.namespace(NS),
    f.service_account(NS, "web"),
    f.service_account(NS, "client"),
    _http_service("web"),
    _http_service("web-v1"),
    _http_service("web-v2"),
    _http_service("client"),
    f.split(NS, "web-split", "web", {"web-v1": 100, "web-v2": 0}),
    f.route_group(NS, "everything", {"all": ".*"}),
    f.target(NS, "client-to-web", "web", [f"{NS}/client"], "everything"),
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


MEMBERS = {
    "eu-1": ("region=eu", "ring=canary"),
    "eu-2": ("region=eu",),
    "us-1": ("region=us",),
    "us-2": ("region=us",),
}


class MeshMetrics:
    """Envoy's upstream request counters for shop/web-v1 and shop/web-v2, growing by 50 requests per
    scrape, all answered 2xx: the members other than the canary, always healthy."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = metrics.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def scrape(self) -> str:
        for backend in ("web-v1", "web-v2"):
            key = (backend, "2")
            self.counts[key] = self.counts.get(key, 0) + 50
        lines = ["# TYPE envoy_cluster_upstream_rq_xx counter"]
        lines += [
            f'envoy_cluster_upstream_rq_xx{{envoy_cluster_name="shop/{b}|80",'
            f'envoy_response_code_class="{k}"}} {n}'
            for (b, k), n in sorted(self.counts.items())
        ]
        return "\n".join(lines) + "\n"


class Canary:
    """The canary member's sidecars: real Envoys in front of web-v1, web-v2 (``apps``, whose
    ``error_rate`` a test sets) and client, which sends web a request every 20 ms while
    ``sending`` is set. They connect to the eu-1 agent's xDS port, with certificates of the mesh CA
    kept in eu-1's cluster."""

    def __init__(self, workdir: Path, address: str) -> None:
        self.workdir = workdir
        self.apps = {name: App(name) for name in ("web-v1", "web-v2", "client")}
        self.proxies = {
            name: Proxy(
                Identity(NS, "client" if name == "client" else "web"),
                ServiceRef(NS, name),
                app.port,
                free_port(),
                free_port(),
                inbound_address=address,  # the endpoints' (the apiserver refuses loopback ones)
            )
            for name, app in self.apps.items()
        }
        self.sidecars: list[Sidecar] = []
        self.sending = threading.Event()
        self._closed = threading.Event()
        self._traffic = threading.Thread(target=self._send, daemon=True)

    def endpoints(self) -> str:
        """EndpointSlices: each service at its sidecar's inbound port, for the base."""
        return f.dump(
            *(
                endpoint_slice(p.service, "http", p.inbound_address, p.inbound_port)
                for p in self.proxies.values()
            )
        )

    def start(self, xds_port: int, ca: CaState) -> None:
        now = datetime.now(UTC)
        self.sidecars = [
            Sidecar(p, xds_port, self.workdir, client_tls(ca, p.identity, now)) for p in self.proxies.values()
        ]
        for sidecar in self.sidecars:
            eventually(sidecar.ready, bool, f"the {sidecar.proxy.service} sidecar ready", timeout=60)
        self.sending.set()
        self._traffic.start()

    def _send(self) -> None:
        port = self.proxies["client"].outbound_port
        while not self._closed.is_set():
            if self.sending.is_set():
                # A request cut short (a sidecar's listener drained as its configuration changes)
                # is traffic like any other: the health judged counts what the sidecars saw.
                with contextlib.suppress(OSError, http.client.HTTPException):
                    call(port, f"web.{NS}", "/")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed.set()
        for sidecar in self.sidecars:
            sidecar.close()
        for app in self.apps.values():
            app.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[MeshMetrics], str]]:
    """``prometheus(metrics)``: a real Prometheus scraping ``metrics`` every second; its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed: make prometheus (make test does it)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(metrics: MeshMetrics) -> str:
        workdir = tmp_path / f"prometheus-{len(processes)}"
        workdir.mkdir()
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "sidecars", "static_configs": [{"targets": [metrics.address]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        address = f"127.0.0.1:{free_port()}"
        with (workdir / "prometheus.log").open("w") as log:
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={workdir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={workdir / 'tsdb'}",
                        f"--web.listen-address={address}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://{address}"
        eventually(lambda: _ready(url), bool, "Prometheus ready")
        return url

    try:
        yield start
    finally:
        for process in processes:
            stop_process(process)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture
def canary(tmp_path: Path, pod_address: str) -> Iterator[Canary]:
    workdir = tmp_path / "canary"
    workdir.mkdir()
    sidecars = Canary(workdir, pod_address)
    yield sidecars
    sidecars.close()


@pytest.fixture
def git_http(git_repo: GitRepo) -> Iterator[GitHttpServer]:
    """``git_repo`` served over HTTP (``git http-backend``), its commits there as soon as made."""
    server = GitHttpServer(git_repo.path).start()
    yield server
    server.stop()


@pytest.fixture
def fleet(
    add_kube_cluster: Callable[..., Cluster],
    git_repo: GitRepo,
    git_http: GitHttpServer,
    tmp_path: Path,
    prometheus: Callable[[MeshMetrics], str],
    canary: Canary,
) -> Iterator[tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo]]:
    """The hub with one configuration (the base, and fleet/eu for region=eu), members eu-1 (the
    canary), eu-2, us-1 and us-2 joined and each followed by its agent; eu-1's health from the
    ``canary``'s sidecars, the others' from metrics that stay healthy."""
    git_repo.commit(
        "base and the EU overlay",
        {
            "fleet/base/kustomization.yaml": yaml.safe_dump({"resources": ["mesh.yaml", "endpoints.yaml"]}),
            "fleet/base/mesh.yaml": f.dump(*BASE),
            "fleet/base/endpoints.yaml": canary.endpoints(),
            **_eu_overlay(10),
        },
    )
    hub = add_kube_cluster()
    members = {name: add_kube_cluster() for name in MEMBERS}
    agents: dict[str, RunningController] = {}
    healthy = MeshMetrics()
    try:
        others = prometheus(healthy)
        assert "fleetclusters.gitmesh.dev established" in _cli(
            "install", "fleet-hub", "--kubeconfig", hub.kubeconfig
        )
        configuration = {
            "apiVersion": "gitmesh.dev/v1alpha1",
            "kind": "FleetConfiguration",
            "metadata": {"name": "mesh", "namespace": "gitmesh-fleet"},
            "spec": {
                "repository": git_http.url(".git"),
                "ref": {"branch": "main"},
                "path": "fleet/base",
                "interval": "1s",
                "overlays": [{"path": "fleet/eu", "clusterSelector": {"matchLabels": {"region": "eu"}}}],
            },
        }
        hub.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        # The canary's sidecars' certificates are from the CA its agent will find in its cluster.
        canary_ca = store.load_or_create(
            settings.kubernetes(str(members["eu-1"].kubeconfig)).state.ca, datetime.now(UTC)
        )
        for name, member in members.items():
            _cli("install", "crds", "--kubeconfig", member.kubeconfig)
            credentials = tmp_path / f"{name}.hub.kubeconfig"
            _cli(
                "fleet",
                "join",
                name,
                *(a for label in MEMBERS[name] for a in ("-l", label)),
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
                    # eu-1 judges its health from the sidecars it serves, as gitmesh run does
                    *(() if name == "eu-1" else ("--rollout-prometheus", others)),
                ],
            ).start()
        canary.start(agents["eu-1"].xds_port, canary_ca)
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
        healthy.close()


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
    fleet: tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo],
    git_http: GitHttpServer,
    tmp_path: Path,
) -> None:
    hub, members, agents, repo = fleet
    head = repo.git("rev-parse", "HEAD").strip()

    # First rollout: every member Compliant at the head, each with its overlay.
    clusters = eventually(lambda: status(hub), all_compliant_at(head), "every member Compliant", timeout=60)
    assert clusters["eu-1"]["configurations"][0]["path"] == "fleet/eu"
    assert clusters["us-1"]["configurations"][0]["path"] == "fleet/base"
    assert clusters["eu-1"]["labels"] == {"region": "eu", "ring": "canary"}
    assert [weights(members[m]) for m in MEMBERS] == [[90, 10], [90, 10], [100, 0], [100, 0]]
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
    assert [m for m, p in plans.items() if p["splits"]] == ["eu-1", "eu-2"]
    (split,) = plans["eu-1"]["splits"]
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

    # A configuration whose selector is misspelt selects no cluster: status and plan say so and why,
    # and no agent is assigned anything new.
    edge = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "FleetConfiguration",
        "metadata": {"name": "edge", "namespace": "gitmesh-fleet"},
        "spec": {
            "repository": str(repo.path),
            "ref": {"branch": "main"},
            "path": "fleet/base",
            "clusterSelector": {"matchLabels": {"regoin": "eu"}},
        },
    }
    hub.kubectl("apply", "-f", "-", input=json.dumps(edge))
    doc = json.loads(_cli("fleet", "status", "-o", "json", "--kubeconfig", hub.kubeconfig))
    jsonschema.validate(doc, json.loads((SCHEMAS / "fleet-status.schema.json").read_text()))
    selections = {c["name"]: c for c in doc["configurations"]}
    assert (sorted(selections["mesh"]["clusters"]), selections["mesh"]["problems"]) == (sorted(MEMBERS), [])
    assert selections["edge"]["clusters"] == []
    assert selections["edge"]["problems"] == [
        "selects no cluster: no cluster has label regoin (the labels there are: region, ring)"
    ]
    table = " ".join(_cli("fleet", "status", "--kubeconfig", hub.kubeconfig).split())  # unwrapped
    assert "Configuration edge: selects no cluster: no cluster has label regoin" in table
    edge_plan = " ".join(
        _cli("fleet", "plan", "edge", "--repo", repo.path, "--kubeconfig", hub.kubeconfig).split()
    )
    assert "No cluster is selected by edge: selects no cluster: no cluster has label regoin" in edge_plan
    hub.kubectl("-n", "gitmesh-fleet", "delete", "fleetconfiguration", "edge")
    assert all(a.process is not None and a.process.poll() is None for a in agents.values())

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
            and broken[:12] in c["eu-1"]["configurations"][0]["reason"]
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

    # An EU overlay that does not render (its patch file is missing): the EU members say why and
    # keep their last good revision; the US members take the commit.
    unrendered = repo.commit(
        "an EU overlay naming a patch that is not there",
        {
            **_eu_overlay(10),
            "fleet/eu/kustomization.yaml": yaml.safe_dump(
                {"resources": ["../base"], "patches": [{"path": "missing.yaml"}]}
            ),
        },
    )
    clusters = eventually(
        lambda: status(hub),
        lambda c: (
            c["eu-2"]["configurations"][0]["desired_revision"] == unrendered
            # the reason of the revision fetched, not of the one before, still under validation
            and unrendered[:12] in c["eu-2"]["configurations"][0]["reason"]
            and c["us-2"]["configurations"][0]["applied_revision"] == unrendered
        ),
        "eu-2 at the overlay that does not render, us-2 past it",
        timeout=60,
    )
    eu = clusters["eu-2"]["configurations"][0]
    assert (clusters["eu-2"]["compliance"], eu["applied_revision"]) == ("Non-Compliant", head)
    assert "GM052" in eu["reason"] and "missing.yaml" in eu["reason"], eu["reason"]
    assert clusters["us-2"]["compliance"] == "Compliant"
    assert weights(members["eu-2"]) == [90, 10] and "web-v3" not in services(members["eu-2"])

    # Suspended on the member itself: the hub hears it.
    _cli("suspend", "mesh", "--kubeconfig", members["us-1"].kubeconfig)
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Suspended", "us-1 Suspended")
    _cli("resume", "mesh", "--kubeconfig", members["us-1"].kubeconfig)
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Compliant", "us-1 Compliant again")

    # Git's server down: the members report it, and each keeps what it had applied.
    git_http.stop()
    clusters = eventually(
        lambda: status(hub),
        lambda c: c["us-1"]["compliance"] == "Non-Compliant",
        "us-1 Non-Compliant without Git",
    )
    assert clusters["us-1"]["configurations"][0]["applied_revision"] == unrendered
    assert "web-v3" in services(members["us-1"]) and weights(members["eu-1"]) == [90, 10]
    git_http.start()
    eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Compliant", "us-1 back with Git")

    # An agent killed: its cluster reads Unknown once its unknownAfter (5s) has passed, and
    # Compliant again once it is back.
    agents["us-1"].kill()
    clusters = eventually(lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Unknown", "us-1 Unknown")
    assert clusters["us-1"]["reason"].startswith("no report for")
    assert clusters["eu-1"]["compliance"] == "Non-Compliant"  # its agent still reports
    agents["us-1"].start()
    clusters = eventually(
        lambda: status(hub), lambda c: c["us-1"]["compliance"] == "Compliant", "us-1 Compliant once back"
    )
    assert clusters["us-1"]["configurations"][0]["applied_revision"] == unrendered

    # The hub assigns the EU members something else (the base): their agents stop, to be started on
    # it (exit 3).
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
    for name in ("eu-1", "eu-2"):
        process = agents[name].process
        assert process is not None
        assert process.wait(30) == 3, agents[name].log.read_text()


def wave_of(hub: Cluster) -> dict[str, Any]:
    doc = json.loads(_cli("fleet", "status", "-o", "json", "--kubeconfig", hub.kubeconfig))
    jsonschema.validate(doc, json.loads((SCHEMAS / "fleet-status.schema.json").read_text()))
    return dict(doc["waves"][0]) if doc["waves"] else {}  # none before the walker's first step


def stages(wave: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["name"]: (s["state"], s["revision"]) for s in wave["stages"]}


def canary_back_at(hub: Cluster, revision: str) -> dict[str, dict[str, Any]]:
    """The fleet's status once eu-1 is Compliant at ``revision`` again."""
    return eventually(
        lambda: status(hub),
        lambda c: (
            c["eu-1"]["compliance"] == "Compliant"
            and c["eu-1"]["configurations"][0]["applied_revision"] == revision
        ),
        f"the canary back at {revision[:12]}",
    )


def wave_status(hub: Cluster) -> dict[str, Any]:
    """``fleet wave status mesh -o json``, checked against its schema."""
    doc = json.loads(_cli("fleet", "wave", "status", "mesh", "-o", "json", "--kubeconfig", hub.kubeconfig))
    jsonschema.validate(doc, json.loads((SCHEMAS / "fleet-waves.schema.json").read_text()))
    return dict(doc["waves"][0])


def test_a_wave_walks_stage_by_stage_and_a_canary_failing_mesh_health_goes_back_alone(
    fleet: tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo],
    canary: Canary,
    tmp_path: Path,
) -> None:
    hub, members, _, repo = fleet
    first = repo.git("rev-parse", "HEAD").strip()
    eventually(lambda: status(hub), all_compliant_at(first), "every member Compliant", timeout=90)
    workdir = tmp_path / "waves"
    workdir.mkdir()
    walker = RunningController(
        workdir, ["--fleet-view", hub.kubeconfig, "--store", workdir / "store.db"]
    ).start()
    try:
        # Stages: the canary (waits 2 s of passing health), the rest of the EU (a person approves),
        # then everyone else. The revision applied now is where the wave starts.
        wave = {
            "stages": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "wait": "2s"},
                {"name": "eu", "clusterSelector": {"matchLabels": {"region": "eu"}}, "approval": True},
                {"name": "rest"},
            ],
            "health": {"successRate": 95, "minRequests": 10, "window": "3s"},
        }
        hub.kubectl(
            "-n", "gitmesh-fleet", "patch", "fleetconfiguration", "mesh", "--type=merge",
            "-p", json.dumps({"spec": {"wave": wave}}),
        )  # fmt: skip
        eventually(
            lambda: wave_of(hub).get("state"), lambda s: s == "Completed", "the wave at the first revision"
        )

        # A new commit: the canary takes it and stays healthy, then the EU waits for approval.
        second = repo.commit("a 20% EU canary", _eu_overlay(20))
        at_approval = eventually(
            lambda: wave_of(hub),
            lambda w: w.get("state") == "WaitingApproval",
            "the eu stage waiting",
            timeout=90,
        )
        assert stages(at_approval) == {
            "canary": ("Passed", second),
            "eu": ("WaitingApproval", first),
            "rest": ("Pending", first),
        }
        assert weights(members["eu-1"]) == [80, 20] and weights(members["eu-2"]) == [90, 10]
        # The member measures its health again and again; under load one window can fall short of
        # min-requests (a hold), so the report is read until it is a pass of the second revision.
        eventually(
            lambda: status(hub)["eu-1"]["configurations"][0]["health"],
            lambda h: (h["revision"], h["verdict"]) == (second, "pass"),
            "the canary's health a pass of the second revision",
        )
        table = _cli("fleet", "status", "--kubeconfig", hub.kubeconfig)
        assert f"Wave of mesh toward {second[:12]}" in table and "WaitingApproval" in table
        if sample := os.environ.get("FLEET_STATUS_SAMPLE"):  # the README's fleet status table
            Path(sample).write_text(table)
        detail = wave_status(hub)
        timeline = [detail]  # the wave as it stands at each step, for $FLEET_TIMELINE
        assert {s["name"]: (s["clusters"], s["waiting_for"]) for s in detail["stages"]} == {
            "canary": (["eu-1"], None),
            "eu": (["eu-2"], "approval"),
            "rest": (["us-1", "us-2"], None),
        }
        passed = detail["stages"][0]
        assert passed["started"] is not None and passed["finished"] is not None, passed
        assert detail["stages"][1]["started"] is None
        assert "approved" in _cli("fleet", "wave", "approve", "mesh", "eu", "--kubeconfig", hub.kubeconfig)
        done = eventually(
            lambda: wave_of(hub), lambda w: w.get("state") == "Completed", "the wave done", timeout=90
        )
        assert done["last_good"] == second
        timeline.append(wave_status(hub))
        eventually(lambda: status(hub), all_compliant_at(second), "every member at the second revision")
        assert weights(members["eu-2"]) == [80, 20]

        # The canary's web-v2 starts failing half its requests; the next commit stops at the canary,
        # which goes back to the last good revision, and no later stage is told of it.
        canary.apps["web-v2"].error_rate = 0.5
        third = repo.commit("a 30% EU canary", _eu_overlay(30))
        halted = eventually(
            lambda: wave_of(hub), lambda w: w.get("state") == "Halted", "the wave halted", timeout=90
        )
        assert halted["revision"] == third
        timeline.append(wave_status(hub))
        assert stages(halted) == {
            "canary": ("RolledBack", second),
            "eu": ("Pending", second),
            "rest": ("Pending", second),
        }
        assert re.search(
            r"halted at stage canary: eu-1: mesh health failed: shop/web-v2: success rate [45]\d\.\d%",
            halted["reason"],
        ), halted["reason"]
        clusters = canary_back_at(hub, second)
        assert weights(members["eu-1"]) == [80, 20]
        assert {c["configurations"][0]["desired_revision"] for c in clusters.values()} == {second}
        assert weights(members["eu-2"]) == [80, 20]

        # No traffic at the canary: its health holds, and the next commit stays at the canary,
        # verifying, until a person aborts it there. The canary goes back as a failing one does, and
        # no later stage is told of it.
        canary.apps["web-v2"].error_rate = 0.0
        canary.sending.clear()
        eventually(
            lambda: status(hub)["eu-1"]["configurations"][0].get("health", {}).get("verdict"),
            lambda v: v == "hold",
            "the canary's health holding",
        )
        fourth = repo.commit("a 40% EU canary", _eu_overlay(40))
        verifying = eventually(
            lambda: wave_status(hub),
            lambda w: w["revision"] == fourth and w["stages"][0]["waiting_for"] == "analysis",
            "the canary verifying the fourth revision",
            timeout=90,
        )
        assert stages(verifying)["canary"] == ("Verifying", fourth)
        asked = _cli("fleet", "wave", "abort", "mesh", "--kubeconfig", hub.kubeconfig)
        assert f"toward {fourth[:12]} (as gitmesh-admin)" in asked, asked
        stopped = eventually(
            lambda: wave_status(hub), lambda w: w["state"] == "Aborted", "the wave aborted", timeout=60
        )
        assert stopped["abort"]["revision"] == fourth and stopped["abort"]["by"] == "gitmesh-admin"
        timeline.append(stopped)
        if published := os.environ.get("FLEET_TIMELINE"):  # the README's picture (docs/fleet-wave.svg)
            Path(published).write_text(render_timeline(timeline, datetime.now(UTC)))
        assert stages(stopped) == {
            "canary": ("RolledBack", second),
            "eu": ("Pending", second),
            "rest": ("Pending", second),
        }
        assert stopped["stages"][0]["finished"] is not None
        assert [s["started"] for s in stopped["stages"][1:]] == [None, None]
        table = _cli("fleet", "wave", "status", "--kubeconfig", hub.kubeconfig)
        assert "Aborted" in table and "gitmesh-admin" in table, table
        clusters = canary_back_at(hub, second)
        assert {c["configurations"][0]["desired_revision"] for c in clusters.values()} == {second}
        assert weights(members["eu-1"]) == [80, 20] and weights(members["eu-2"]) == [80, 20]
        again = CliRunner().invoke(
            cli, ["fleet", "wave", "abort", "mesh", "--kubeconfig", str(hub.kubeconfig)]
        )
        assert again.exit_code == 2 and "is Aborted: nothing to abort" in again.output, again.output
    finally:
        assert walker.stop() == 0, walker.log.read_text()


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
