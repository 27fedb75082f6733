"""The fleet on the controller's HTTP port: the compliance metric and the console's table, from
FleetClusters as the hub returns them, and a hub that stops answering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gitmesh.controller import console
from gitmesh.controller.metrics import Metrics
from gitmesh.errors import ClusterError
from gitmesh.fleet import model
from gitmesh.fleet.hub import Hub
from gitmesh.fleet.view import FleetView
from gitmesh.metrics.prometheus import FLEET_COMPLIANCE
from tests.unit.test_console import view

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def cluster(name: str, compliance: str | None, ago: float = 1.0, reason: str = "") -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name}, "spec": {"unknownAfter": "1m"}}
    if compliance:
        configuration = {
            "name": "mesh",
            "compliance": compliance,
            "desiredRevision": "b" * 40,
            "appliedRevision": "a" * 40,
        }
        obj["status"] = {
            "compliance": compliance,
            "reason": reason,
            "lastReportTime": (NOW - timedelta(seconds=ago)).isoformat(),
            "configurations": [configuration],
        }
    return obj


MEMBERS = [
    model.seen(cluster("eu-1", "Compliant", reason="mesh: applied"), NOW),
    model.seen(cluster("us-1", "Non-Compliant", reason="mesh: <b>invalid</b>"), NOW),
    model.seen(cluster("ap-1", "Compliant", ago=300), NOW),  # silent for longer than unknownAfter
    model.seen(cluster("new-1", None), NOW),
]


def test_each_member_has_one_for_its_state_and_zero_for_every_other() -> None:
    metrics = Metrics()
    metrics.watch_fleet(lambda: MEMBERS)
    (family,) = [
        f for f in text_string_to_metric_families(metrics.exposition().decode()) if f.name == FLEET_COMPLIANCE
    ]
    values = {(s.labels["cluster"], s.labels["state"]): s.value for s in family.samples}
    assert len(values) == len(MEMBERS) * len(model.State)
    ones = {key for key, value in values.items() if value == 1}
    assert ones == {
        ("eu-1", "Compliant"),
        ("us-1", "Non-Compliant"),
        ("ap-1", "Unknown"),
        ("new-1", "Unknown"),
    }


def test_the_console_shows_the_fleet_table_only_when_a_hub_is_shown() -> None:
    assert "fleet" not in console.fragments(view([])) and 'id="fleet"' not in console.page(
        console.fragments(view([]))
    )
    parts = console.fragments(view([], fleet=MEMBERS, at=NOW.timestamp()))
    table = parts["fleet"]
    assert 'id="fleet"' in console.page(parts)
    assert '<td class="state good" rowspan="1">Compliant</td>' in table
    assert '<td class="state bad" rowspan="1">Non-Compliant</td>' in table
    assert table.count('class="state bad"') == 3  # Non-Compliant, and the two Unknown
    assert "mesh: &lt;b&gt;invalid&lt;/b&gt;" in table and "<b>" not in table
    assert f'<td class="desired">{"b" * 12}</td><td class="applied">{"a" * 12}</td>' in table
    assert '<td class="reported" rowspan="1">1s ago</td>' in table and ">never<" in table
    assert "No cluster has joined" in console.fragments(view([], fleet=[]))["fleet"]
    unread = console.fragments(view([], fleet=MEMBERS, fleet_error="hub <down>"))["fleet"]
    assert '<p class="bad">The hub cannot be read: hub &lt;down&gt;</p><table' in unread


class _Hub(Hub):
    """The hub's list of FleetClusters, or its failure."""

    def __init__(self) -> None:
        self.answer: list[dict[str, Any]] | Exception = [cluster("eu-1", "Compliant")]

    def clusters(self) -> list[dict[str, Any]]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def configurations(self) -> list[model.Configuration]:
        return []  # no wave to walk


def test_a_hub_that_stops_answering_leaves_the_last_reading_and_says_why() -> None:
    hub = _Hub()
    fleet = FleetView(hub)
    assert fleet.members() == []
    fleet.read_once()
    assert [m.name for m in fleet.members()] == ["eu-1"] and fleet.error == ""
    hub.answer = ClusterError("the hub does not answer")
    fleet.read_once()
    assert [m.name for m in fleet.members()] == ["eu-1"] and "does not answer" in fleet.error
    hub.answer = [{"metadata": {"name": "bad"}, "spec": {"unknownAfter": "0s"}}]
    fleet.read_once()
    assert [m.name for m in fleet.members()] == ["eu-1"] and "cannot be read" in fleet.error
