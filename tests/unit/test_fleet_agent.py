"""The agent's reports and its reading of the assignment, against a hub in a few lines and the
controller's state stores in memory."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.cluster.inventory import Applied
from gitmesh.cluster.port import Live
from gitmesh.controller import conditions
from gitmesh.controller.conditions import Result
from gitmesh.errors import ConfigError
from gitmesh.fleet import agent, model
from gitmesh.kube import errors
from gitmesh.objects import ObjectRef
from gitmesh.plan.policy import Policy
from gitmesh.rollout.metrics import Measurement
from gitmesh.rollout.model import Sample
from gitmesh.state.records import SourceRecord
from gitmesh.sync.source import RefKind, Source
from tests import factory as f
from tests import fakes


def _configuration(path: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "mesh"},
        "spec": {"repository": "https://git.example.com/m.git", "path": path},
    }


class Hub:
    """Answers with one member and its configurations, or fails as told; keeps what is reported."""

    def __init__(self) -> None:
        self.configuration = _configuration("base")
        self.reports: list[dict[str, Any]] = []
        self.failure: Exception | None = None

    def member(self, name: str) -> model.Member:
        if self.failure:
            raise self.failure
        return model.Member(name, {"region": "eu"}, 60.0)

    def configurations(self) -> list[model.Configuration]:
        return [model.Configuration.of(self.configuration)]

    def report(self, name: str, status: dict[str, Any]) -> None:
        if self.failure:
            raise self.failure
        self.reports.append(status)


def test_the_agent_reports_its_records_and_stops_when_assigned_something_else() -> None:
    hub = Hub()
    settings = fakes.settings(fakes.FakeObjects())
    done = conditions.finished((), Result.APPLIED, "Applied", datetime.now(UTC))
    settings.state.records.save(SourceRecord("mesh", done, "a" * 40, "a" * 40))
    sources = agent.assignment(hub, "eu-1")
    changes: list[str] = []
    reporter = agent.Reporter(hub, "eu-1", sources, settings, 1.0, lambda: changes.append("stop"))

    reporter.report_once()
    ((conf,),) = [r["configurations"] for r in hub.reports]
    assert (hub.reports[0]["compliance"], conf["appliedRevision"], conf["path"]) == (
        "Compliant",
        "a" * 40,
        "base",
    )
    assert changes == []

    hub.failure = errors.Unreachable("the API server at https://hub is unreachable")
    reporter.report_once()  # logged; tried again next time
    assert len(hub.reports) == 1

    hub.failure = None
    hub.configuration = _configuration("overlays/eu")
    reporter.report_once()
    reporter.report_once()
    assert changes == ["stop"] and reporter.changed


def test_the_first_assignment_waits_for_the_hub_but_not_for_a_refusal() -> None:
    hub = Hub()
    hub.failure = errors.Unreachable("the API server at https://hub is unreachable")
    stopped = threading.Event()
    stopped.set()
    assert agent.first_assignment(hub, "eu-1", stopped) is None
    hub.failure = errors.Forbidden(403, "Forbidden", "agent-eu-1 cannot get fleetclusters us-1")
    with pytest.raises(errors.Forbidden):
        agent.first_assignment(hub, "us-1", threading.Event())
    hub.failure = None
    hub.configuration = {"metadata": {"name": "mesh"}, "spec": {"repository": "r", "interval": "0s"}}
    with pytest.raises(
        ConfigError, match="FleetConfiguration gitmesh-fleet/mesh in the fleet hub cannot be read"
    ):
        agent.first_assignment(hub, "eu-1", threading.Event())


def test_fleet_commands_need_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = CliRunner().invoke(cli, ["fleet", "status", "--store", str(tmp_path / "store.db")])
    assert result.exit_code == 2
    assert "fleet commands work on the hub: give its --kubeconfig" in result.output
    assert not (tmp_path / "store.db").exists()


class Metrics:
    """Every backend served ``requests``, ``errors`` of them failed, in every window."""

    def __init__(self, errors: float) -> None:
        self.errors = errors
        self.asked: list[tuple[str, ...]] = []

    def measure(self, backends: Sequence[str], policy: Policy, window: float, mark: Any) -> Measurement:
        self.asked.append(tuple(backends))
        return Measurement({b: Sample(100, self.errors) for b in backends}, {})


def test_a_wave_moves_the_agents_commit_in_place_and_its_mesh_health_is_reported() -> None:
    hub = Hub()
    objects = fakes.FakeObjects()
    settings = fakes.settings(objects)
    split = f.split("shop", "web-split", "web", {"web-v1": 90, "web-v2": 10, "web-v3": 0})
    ref = ObjectRef.of(split)
    objects.objects[ref] = Live(split, "1")
    settings.state.inventories.save("mesh", {ref: Applied("h", "1")}, "a" * 40, "main", "")
    done = conditions.finished((), Result.APPLIED, "Applied", datetime.now(UTC))
    settings.state.records.save(SourceRecord("mesh", done, "b" * 40, "b" * 40))
    hub.configuration = {
        **_configuration("base"),
        "spec": {
            **_configuration("base")["spec"],
            "wave": {
                "stages": [{"name": "all"}],
                "health": {"successRate": 95, "minRequests": 10, "window": "1ms"},
            },
        },
    }
    sources = agent.assignment(hub, "eu-1")
    stops: list[str] = []
    retargets: list[Source] = []
    reporter = agent.Reporter(hub, "eu-1", sources, settings, 1.0, lambda: stops.append("stop"))
    metrics = Metrics(errors=50)
    reporter.attach(retargets.append, metrics)
    reporter.report_once()  # learns the configurations
    hub.configuration["status"] = {
        "wave": {
            "revision": "b" * 40,
            "lastGood": "a" * 40,
            "state": "Progressing",
            "reason": "",
            "stages": [
                {
                    "name": "all",
                    "revision": "b" * 40,
                    "state": "Applying",
                    "reason": "",
                    "since": "2026-12-05T12:00:00Z",
                }
            ],
        }
    }
    reporter.report_once()
    assert stops == [] and [(s.ref.kind, s.ref.value) for s in retargets] == [(RefKind.COMMIT, "b" * 40)]
    assert reporter.sources == tuple(retargets)
    reporter.report_once()
    health = hub.reports[-1]["configurations"][0]["health"]
    assert metrics.asked[-1] == ("shop/web-v1", "shop/web-v2")  # web-v3 at 0 gets no traffic to judge
    assert (health["revision"], health["verdict"]) == ("b" * 40, "fail")
    assert "success rate 50.0% is below 95%" in health["reasons"][0]
    metrics.errors = 0
    time.sleep(0.01)  # past its 1 ms window
    reporter.report_once()
    health = hub.reports[-1]["configurations"][0]["health"]
    assert health["verdict"] == "pass" and health["passingSince"].endswith("Z")


class WatchedHub(Hub):
    """Lists the configurations, then answers a watch with the events queued for it; a watch that
    ends (or an ERROR event, the hub's 410 Gone) makes the agent list again."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def list_configurations(self) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [self.configuration], str(self.lists)

    def watch_configurations(self, resource_version: str, seconds: int) -> Iterator[dict[str, Any]]:
        while (event := self.events.get(timeout=10)) is not None:
            yield event


def test_the_assignment_is_watched_and_listed_again_when_the_watch_ends() -> None:
    hub = WatchedHub()
    changes = queue.Queue[str]()
    watch = agent.AssignmentWatch(hub, "eu-1", lambda: changes.put("changed"))
    watch.start()
    try:
        assert changes.get(timeout=10) == "changed"
        member, (configuration,) = watch.current() or (None, [])
        assert member is not None and configuration.path == "base"
        hub.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}})
        hub.events.put({"type": "MODIFIED", "object": _configuration("overlays/eu")})
        assert changes.get(timeout=10) == "changed"
        (_, (configuration,)) = watch.current() or (None, [])
        assert configuration.path == "overlays/eu" and hub.lists == 1
        hub.events.put({"type": "DELETED", "object": _configuration("overlays/eu")})
        assert changes.get(timeout=10) == "changed"
        assert watch.current() == (member, [])
        hub.events.put({"type": "ERROR", "object": {"code": 410}})
        assert changes.get(timeout=10) == "changed" and hub.lists == 2  # listed again
    finally:
        watch.stop()
        hub.events.put(None)
