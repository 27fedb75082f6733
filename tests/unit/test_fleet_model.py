"""The fleet's pure model: assignments and overlays from the hub's objects, compliance from a source's
record, Unknown from a silent agent, and the hub's objects (CRDs and a member's RBAC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.controller import conditions
from gitmesh.controller.conditions import Result
from gitmesh.fleet import hub, model
from gitmesh.fleet.model import State
from gitmesh.state.records import ObjectResult, SourceRecord
from gitmesh.sync.source import RefKind

NOW = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)


def cluster(name: str, labels: dict[str, str], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name}, "spec": {"labels": labels, "unknownAfter": "30s"}}
    if status is not None:
        obj["status"] = status
    return obj


CONFIGURATION: dict[str, Any] = {
    "metadata": {"name": "mesh"},
    "spec": {
        "repository": "https://git.example.com/mesh.git",
        "ref": {"tag": "v1"},
        "path": "base",
        "namespace": "shop",
        "interval": "10s",
        "clusterSelector": {"matchLabels": {"tier": "edge"}},
        "overlays": [
            {"path": "overlays/canary", "clusters": ["eu-1"]},
            {"path": "overlays/eu", "clusterSelector": {"matchLabels": {"region": "eu"}}},
        ],
    },
}


@pytest.mark.parametrize(
    ("name", "labels", "path"),
    [
        ("eu-1", {"tier": "edge", "region": "eu"}, "overlays/canary"),  # named: first overlay wins
        ("eu-2", {"tier": "edge", "region": "eu"}, "overlays/eu"),
        ("us-1", {"tier": "edge", "region": "us"}, "base"),
    ],
    ids=["named", "by-label", "base"],
)
def test_a_member_follows_its_overlay_or_the_base(name: str, labels: dict[str, str], path: str) -> None:
    member = model.Member.of(cluster(name, labels))
    (source,) = model.assignment(member, [model.Configuration.of(CONFIGURATION)])
    assert (source.name, source.path, source.namespace, source.interval) == ("mesh", path, "shop", 10.0)
    assert (source.ref.kind, source.ref.value) == (RefKind.TAG, "v1")


def test_a_configuration_selects_by_labels() -> None:
    member = model.Member.of(cluster("core-1", {"region": "eu"}))
    assert model.assignment(member, [model.Configuration.of(CONFIGURATION)]) == ()


def _selection(spec: dict[str, Any], *members: tuple[str, dict[str, str]]) -> model.Selection:
    configuration = model.Configuration.of({"metadata": {"name": "mesh"}, "spec": spec})
    return model.selection(configuration, [model.Member.of(cluster(n, labels)) for n, labels in members])


FLEET = (("eu-1", {"tier": "edge", "region": "eu"}), ("us-1", {"tier": "edge", "region": "us"}))


def test_a_selection_names_its_clusters_and_nothing_is_wrong_when_every_part_reaches_one() -> None:
    eu_2 = ("eu-2", {"tier": "edge", "region": "eu"})
    chosen = _selection(CONFIGURATION["spec"], *FLEET, eu_2, ("core-1", {"region": "eu"}))
    assert (chosen.clusters, chosen.problems) == (("eu-1", "us-1", "eu-2"), ())


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        (
            {"teir": "edge"},
            "selects no cluster: no cluster has label teir (the labels there are: region, tier)",
        ),
        ({"tier": "egde"}, "selects no cluster: no cluster has tier=egde (tier is edge there)"),
        ({"region": "ap"}, "selects no cluster: no cluster has region=ap (region is eu or us there)"),
        (
            {"region": "eu", "tier": "core"},
            "selects no cluster: no cluster has tier=core (tier is edge there)",
        ),
    ],
    ids=["unknown-key", "unknown-value", "values-listed", "second-label"],
)
def test_a_selector_that_matches_no_cluster_says_which_label_none_has(
    selector: dict[str, str], problem: str
) -> None:
    spec = {**CONFIGURATION["spec"], "clusterSelector": {"matchLabels": selector}, "overlays": []}
    chosen = _selection(spec, *FLEET)
    assert (chosen.clusters, chosen.problems) == ((), (problem,))


def test_a_selector_is_unmatched_in_an_empty_fleet_and_by_a_combination() -> None:
    spec = {**CONFIGURATION["spec"], "overlays": []}
    assert _selection(spec).problems == ("selects no cluster: no cluster has joined the fleet",)
    both = {**spec, "clusterSelector": {"matchLabels": {"region": "eu", "tier": "core"}}}
    mixed = (("eu-1", {"region": "eu", "tier": "edge"}), ("core-1", {"region": "us", "tier": "core"}))
    assert _selection(both, *mixed).problems == (
        "selects no cluster: no cluster has all of region=eu, tier=core",
    )


def test_overlays_and_wave_stages_that_reach_no_selected_cluster_are_named() -> None:
    spec = {
        **CONFIGURATION["spec"],
        "overlays": [
            {"path": "overlays/canary", "clusters": ["eu-9"]},  # never joined
            {"path": "overlays/core", "clusters": ["core-1"]},  # joined, not selected
            {"path": "overlays/eu", "clusterSelector": {"matchLabels": {"region": "eu"}}},
            {
                "path": "overlays/eu-again",
                "clusterSelector": {"matchLabels": {"tier": "edge", "region": "eu"}},
            },
            {"path": "overlays/ap", "clusterSelector": {"matchLabels": {"region": "ap"}}},
        ],
        "wave": {
            "stages": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}},
                {"name": "eu", "clusterSelector": {"matchLabels": {"region": "eu"}}},
                {"name": "all"},
            ]
        },
    }
    chosen = _selection(spec, *FLEET, ("core-1", {"region": "eu"}))
    assert chosen.clusters == ("eu-1", "us-1")
    assert chosen.problems == (
        "overlay overlays/canary applies to no cluster: no cluster eu-9 has joined the fleet",
        "overlay overlays/core applies to no cluster: the configuration does not select core-1",
        "overlay overlays/eu-again applies to no cluster: each cluster it would apply to takes an earlier "
        "overlay (overlays/eu)",
        "overlay overlays/ap applies to no cluster: no cluster has region=ap (region is eu or us there)",
        "wave stage canary holds no cluster: no cluster has label ring (the labels there are: region, tier)",
    )
    assert chosen.to_json()["problems"] == list(chosen.problems)


def _record(result: Result | None, applied: str | None, attempted: str | None) -> SourceRecord:
    conds = conditions.finished((), result, "the message", NOW) if result else ()
    return SourceRecord("mesh", conds, applied, attempted)


@pytest.mark.parametrize(
    ("record", "suspended", "state", "reason"),
    [
        (None, False, State.PENDING, "not reconciled yet"),
        (_record(Result.APPLIED, "a" * 40, "a" * 40), False, State.COMPLIANT, "the message"),
        (_record(Result.APPLIED, "a" * 40, "b" * 40), False, State.PENDING, f"reconciling {'b' * 40}"),
        (_record(Result.INVALID, "a" * 40, "b" * 40), False, State.NON_COMPLIANT, "the message"),
        (_record(Result.APPLIED, "a" * 40, "a" * 40), True, State.SUSPENDED, "reconciles are suspended"),
    ],
    ids=["never", "applied", "newer-head", "invalid", "suspended"],
)
def test_compliance_follows_the_record(
    record: SourceRecord | None, suspended: bool, state: State, reason: str
) -> None:
    member = model.Member.of(cluster("eu-2", {"tier": "edge", "region": "eu"}))
    (source,) = model.assignment(member, [model.Configuration.of(CONFIGURATION)])
    found = model.compliance(source, record, suspended, 3)
    assert (found.state, found.path, found.objects) == (state, "overlays/eu", 3)
    assert found.reason.startswith(reason)
    if record:
        revisions = (found.applied_revision, found.desired_revision)
        assert revisions == (record.last_applied, record.last_attempted)


def test_a_report_carries_the_per_object_results() -> None:
    record = SourceRecord(
        "mesh",
        conditions.finished((), Result.FAILED, "1 object(s) could not be applied", NOW),
        "a" * 40,
        "b" * 40,
        objects=(
            ObjectResult("Service/shop/web", "refused", "422 Invalid"),
            ObjectResult("Namespace/shop", "created"),
        ),
        objects_omitted=2,
    )
    member = model.Member.of(cluster("us-1", {"tier": "edge"}))
    (source,) = model.assignment(member, [model.Configuration.of(CONFIGURATION)])
    (reported,) = model.report([model.compliance(source, record, False, 1)], NOW)["configurations"]
    assert reported["objectResults"] == [
        {"object": "Service/shop/web", "result": "refused", "message": "422 Invalid"},
        {"object": "Namespace/shop", "result": "created"},
    ]
    assert reported["objectResultsOmitted"] == 2


def test_overlapping_configurations_are_the_clusters_reason() -> None:
    mesh = model.Compliance(
        "mesh", State.COMPLIANT, "ok", "", "a", "a", 2, (ObjectResult("Service/shop/web", "unchanged"),)
    )
    extra = model.Compliance(
        "extra",
        State.NON_COMPLIANT,
        "refused",
        "",
        "b",
        None,
        0,
        (ObjectResult("Service/shop/web", "claimed", "applied by mesh"),),
    )
    status = model.report([extra, mesh], NOW)
    assert status["overlaps"] == [{"object": "Service/shop/web", "appliedBy": "mesh", "refusedTo": "extra"}]
    assert status["compliance"] == "Non-Compliant"
    assert status["reason"].startswith(
        "overlapping configurations: mesh and extra declare the same 1 object(s)"
    )


def test_a_member_is_as_compliant_as_its_worst_configuration() -> None:
    def c(name: str, state: State) -> model.Compliance:
        return model.Compliance(name, state, f"{name} says", "", None, None, 0)

    assert model.overall([c("a", State.COMPLIANT), c("b", State.NON_COMPLIANT)]) == (
        State.NON_COMPLIANT,
        "b: b says",
    )
    assert model.overall([c("a", State.COMPLIANT), c("b", State.PENDING)])[0] is State.PENDING
    assert model.overall([])[0] is State.COMPLIANT


def test_a_silent_agent_reads_unknown_after_its_time() -> None:
    status = model.report([model.Compliance("mesh", State.COMPLIANT, "ok", "", "a", "a", 1)], NOW)
    assert status["lastReportTime"] == "2026-12-05T07:00:00Z"
    obj = cluster("eu-1", {}, status)
    assert model.seen(obj, NOW + timedelta(seconds=29)).state is State.COMPLIANT
    late = model.seen(obj, NOW + timedelta(seconds=31))
    assert (late.state, late.reason) == (State.UNKNOWN, "no report for 31s (unknown after 30s)")
    assert model.seen(cluster("eu-2", {}), NOW).state is State.UNKNOWN  # never reported


def test_the_hub_crds_keep_status_apart_and_an_agent_writes_only_its_own() -> None:
    crds = {o["metadata"]["name"]: o for o in hub.hub_objects() if o["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {"fleetclusters.gitmesh.dev", "fleetconfigurations.gitmesh.dev"}
    (version,) = crds["fleetclusters.gitmesh.dev"]["spec"]["versions"]
    assert version["subresources"] == {"status": {}}  # the agent's writes cannot touch the spec
    (role,) = [o for o in hub.member_objects("eu-1", {"region": "eu"}, "1m") if o["kind"] == "Role"]
    writes = [r for r in role["rules"] if set(r["verbs"]) & {"patch", "create", "update", "delete"}]
    assert writes == [
        {
            "apiGroups": ["gitmesh.dev"],
            "resources": ["fleetclusters/status"],
            "resourceNames": ["eu-1"],
            "verbs": ["get", "patch"],
        }
    ]


def test_install_fleet_hub_dry_run_prints_what_it_would_apply() -> None:
    result = CliRunner().invoke(cli, ["install", "fleet-hub", "--dry-run", "-o", "yaml"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("CustomResourceDefinition", "fleetclusters.gitmesh.dev"),
        ("CustomResourceDefinition", "fleetconfigurations.gitmesh.dev"),
        ("Namespace", "gitmesh-fleet"),
    ]
