"""A wave walked step by step: stages in order, each gated on Compliant and mesh health for its wait,
approvals, a failing stage rolled back and the wave halted, a person's abort, a new head restarting
it; the commit each member's agent follows; and the wave as ``fleet wave status -o json`` prints it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema

from gitmesh.cli.fleet import wave_json
from gitmesh.fleet import model, wave
from gitmesh.fleet.wave import MemberReport, StageState, WaveState
from gitmesh.sync.source import Ref, RefKind

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
OLD, NEW, NEWER = "a" * 40, "b" * 40, "c" * 40
WAVE = wave.Wave.of(
    {
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "wait": "30s"},
            {"name": "eu", "clusterSelector": {"matchLabels": {"region": "eu"}}, "approval": True},
            {"name": "all"},
        ],
        "health": {"successRate": 95, "minRequests": 10, "window": "5s"},
    }
)
LABELS = {"c-1": {"ring": "canary", "region": "eu"}, "eu-1": {"region": "eu"}, "us-1": {"region": "us"}}


def report(
    name: str, applied: str, verdict: str = "pass", since: datetime | None = T0, compliance: str = "Compliant"
) -> MemberReport:
    return MemberReport(
        name,
        LABELS[name],
        True,
        compliance,
        "the reason",
        applied,
        applied,
        applied,
        verdict,
        ("web-v2: success rate 50.0% is below 95%",) if verdict == "fail" else (),
        since if verdict == "pass" else None,
    )


def at(revision: str, **overrides: MemberReport) -> list[MemberReport]:
    members = {name: report(name, revision) for name in LABELS}
    return list({**members, **overrides}.values())


def test_the_first_revision_goes_everywhere_and_the_next_walks_stage_by_stage() -> None:
    status = wave.step(WAVE, None, OLD, at(OLD), T0)
    assert (status.state, [s.revision for s in status.stages]) == (WaveState.COMPLETED, [OLD] * 3)

    status = wave.step(WAVE, status, NEW, at(OLD), T0)
    assert status.stages[0].state is StageState.APPLYING
    assert [s.revision for s in status.stages] == [NEW, OLD, OLD]  # only the canary is told

    # The canary Compliant and healthy, but not for its 30 s yet.
    members = at(OLD, **{"c-1": report("c-1", NEW, since=T0 + timedelta(seconds=10))})
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=20))
    assert status.stages[0].state is StageState.VERIFYING, status.stages[0].reason
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=41))
    assert status.stages[0].state is StageState.PASSED

    # eu waits for a person; approved for another revision is not approved.
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=42))
    assert (status.state, status.stages[1].state) == (WaveState.WAITING_APPROVAL, StageState.WAITING_APPROVAL)
    assert status.stages[1].revision == OLD
    approved = wave.Wave(WAVE.stages, WAVE.health, {"eu": NEW})
    status = wave.step(approved, status, NEW, members, T0 + timedelta(seconds=43))
    assert (status.stages[1].state, status.stages[1].revision) == (StageState.APPLYING, NEW)

    members = at(NEW, **{"us-1": report("us-1", OLD)})
    status = wave.step(approved, status, NEW, members, T0 + timedelta(seconds=44))
    assert status.stages[1].state is StageState.PASSED  # no wait: healthy is enough
    status = wave.step(approved, status, NEW, members, T0 + timedelta(seconds=45))
    assert (status.stages[2].state, status.stages[2].revision) == (StageState.APPLYING, NEW)
    status = wave.step(approved, status, NEW, at(NEW), T0 + timedelta(seconds=46))
    assert (status.state, status.last_good) == (WaveState.COMPLETED, NEW)


def test_a_stage_failing_mesh_health_goes_back_and_halts_the_wave_leaving_later_stages_alone() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    members = at(OLD, **{"c-1": report("c-1", NEW, verdict="fail")})
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=5))
    assert (status.state, status.stages[0].state) == (WaveState.HALTED, StageState.ROLLED_BACK)
    assert [s.revision for s in status.stages] == [OLD, OLD, OLD]
    assert "c-1: mesh health failed: web-v2: success rate 50.0% is below 95%" in status.reason
    assert [s.state for s in status.stages[1:]] == [StageState.PENDING] * 2
    # Halted it stays, whatever the members say, until a new head restarts it.
    assert wave.step(WAVE, status, NEW, at(OLD), T0 + timedelta(seconds=60)) == status
    status = wave.step(WAVE, status, NEWER, at(OLD), T0 + timedelta(seconds=61))
    assert (status.state, status.revision, status.stages[0].revision) == (WaveState.PROGRESSING, NEWER, NEWER)


def test_a_stage_whose_revision_is_invalid_on_a_member_fails_too() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    broken = MemberReport(
        "c-1", LABELS["c-1"], True, "Non-Compliant", "invalid: GM020", NEW, OLD, OLD, "pass", (), T0
    )
    status = wave.step(WAVE, status, NEW, at(OLD, **{"c-1": broken}), T0 + timedelta(seconds=5))
    assert status.state is WaveState.HALTED and "c-1: invalid: GM020" in status.reason


def test_a_silent_member_holds_its_stage() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    silent = MemberReport("c-1", LABELS["c-1"], False, "Compliant", "", NEW, NEW, NEW, "pass", (), T0)
    status = wave.step(WAVE, status, NEW, at(OLD, **{"c-1": silent}), T0 + timedelta(minutes=5))
    assert status.stages[0].state is StageState.APPLYING and "not: c-1" in status.stages[0].reason


def test_each_member_follows_the_commit_its_stage_has_reached() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    configuration = model.Configuration.of(
        {
            "metadata": {"name": "mesh"},
            "spec": {"repository": "r", "ref": {"branch": "main"}, "wave": {"stages": [{"name": "canary"}]}},
            "status": {"wave": status.to_json()},
        }
    )
    assert configuration.wave_status == status  # its JSON reads back
    configuration = model.Configuration("mesh", "r", configuration.ref, "", "", 60.0, {}, (), WAVE, status)
    refs = {
        name: configuration.source(model.Member(name, labels, 60.0)).ref for name, labels in LABELS.items()
    }
    assert {r.kind for r in refs.values()} == {RefKind.COMMIT}
    assert {name: r.value for name, r in refs.items()} == {"c-1": NEW, "eu-1": OLD, "us-1": OLD}


def abort(revision: str, by: str = "alice") -> wave.Abort:
    return wave.Abort(revision, by, T0 + timedelta(seconds=30))


def aborted(revision: str, by: str = "alice") -> wave.Wave:
    return wave.Wave(WAVE.stages, WAVE.health, {}, abort(revision, by))


def test_an_abort_sends_the_stage_under_way_back_and_never_starts_the_later_ones() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    assert (status.stages[0].started, status.stages[0].waiting_for) == (T0, wave.Gate.CLUSTERS)
    members = at(OLD, **{"c-1": report("c-1", NEW, since=T0 + timedelta(seconds=10))})
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=20))
    assert status.stages[0].waiting_for is wave.Gate.WAIT

    status = wave.step(aborted(NEW), status, NEW, members, T0 + timedelta(seconds=31))
    assert (status.state, status.abort) == (WaveState.ABORTED, abort(NEW))
    assert "aborted at stage canary by alice at 2026-12-05T12:00:30Z" in status.reason
    canary = status.stages[0]
    assert (canary.state, canary.revision, canary.waiting_for) == (StageState.ROLLED_BACK, OLD, None)
    assert (canary.started, canary.finished) == (T0, T0 + timedelta(seconds=31))
    assert [(s.state, s.revision, s.started) for s in status.stages[1:]] == [
        (StageState.PENDING, OLD, None)
    ] * 2
    # Aborted it stays, healthy canary or not, until a new head starts another wave.
    assert wave.step(aborted(NEW), status, NEW, at(NEW), T0 + timedelta(seconds=90)) == status
    status = wave.step(aborted(NEW), status, NEWER, at(OLD), T0 + timedelta(seconds=91))
    assert (status.state, status.abort, status.stages[0].revision) == (WaveState.PROGRESSING, None, NEWER)


def test_an_abort_at_an_approval_leaves_that_stage_unstarted_and_the_passed_one_as_it_is() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    members = at(OLD, **{"c-1": report("c-1", NEW)})
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=31))
    status = wave.step(WAVE, status, NEW, members, T0 + timedelta(seconds=32))
    assert (status.stages[1].state, status.stages[1].waiting_for) == (
        StageState.WAITING_APPROVAL,
        wave.Gate.APPROVAL,
    )

    late = wave.Wave(WAVE.stages, WAVE.health, {"eu": NEW}, abort(NEW, "bob"))  # approved, then aborted
    status = wave.step(late, status, NEW, members, T0 + timedelta(seconds=33))
    assert status.state is WaveState.ABORTED and "aborted at stage eu by bob" in status.reason
    assert [(s.state, s.revision) for s in status.stages] == [
        (StageState.PASSED, NEW),
        (StageState.PENDING, OLD),
        (StageState.PENDING, OLD),
    ]
    assert (status.stages[1].reason, status.stages[1].started) == ("aborted by bob", None)


def test_an_abort_of_another_revision_changes_nothing() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    assert wave.step(aborted(OLD), status, NEW, at(OLD), T0) == wave.step(WAVE, status, NEW, at(OLD), T0)


def test_the_abort_and_the_stages_times_read_back_from_the_hub() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    status = wave.step(aborted(NEW), status, NEW, at(OLD), T0 + timedelta(seconds=5))
    spec = {"stages": [{"name": "canary"}], "abort": abort(NEW).to_json()}
    assert spec["abort"] == {"revision": NEW, "by": "alice", "at": "2026-12-05T12:00:30Z"}
    configuration = model.Configuration.of(
        {
            "metadata": {"name": "mesh"},
            "spec": {"repository": "r", "wave": spec},
            "status": {"wave": status.to_json()},
        }
    )
    assert configuration.wave_status == status
    assert configuration.wave is not None and configuration.wave.abort == abort(NEW)
    # What is not known yet is left out, so that the walker's apply drops what it wrote before.
    assert (
        "started" not in status.to_json()["stages"][1] and "waitingFor" not in status.to_json()["stages"][0]
    )


def test_wave_status_json_names_each_stages_clusters_and_who_aborted() -> None:
    status = wave.step(WAVE, wave.step(WAVE, None, OLD, at(OLD), T0), NEW, at(OLD), T0)
    status = wave.step(aborted(NEW), status, NEW, at(OLD), T0 + timedelta(seconds=5))
    configuration = model.Configuration(
        "mesh", "r", Ref(RefKind.BRANCH, "main"), "", "", 60.0, {}, (), aborted(NEW), status
    )
    members = [model.Member(name, labels, 60.0) for name, labels in LABELS.items()]
    doc = wave_json(configuration, members)
    schema = Path(__file__).parents[2] / "gitmesh" / "cli" / "schemas" / "fleet-waves.schema.json"
    jsonschema.validate(
        {"format_version": 1, "kind": "fleet-waves", "target": "kube:hub", "waves": [doc]},
        json.loads(schema.read_text()),
    )
    assert doc is not None
    assert (doc["state"], doc["abort"]) == (
        "Aborted",
        {"revision": NEW, "by": "alice", "at": "2026-12-05T12:00:30Z"},
    )
    assert [(s["name"], s["clusters"], s["state"]) for s in doc["stages"]] == [
        ("canary", ["c-1"], "RolledBack"),
        ("eu", ["eu-1"], "Pending"),
        ("all", ["us-1"], "Pending"),
    ]
    canary = doc["stages"][0]
    assert (canary["started"], canary["finished"], canary["waiting_for"]) == (
        "2026-12-05T12:00:00Z",
        "2026-12-05T12:00:05Z",
        None,
    )
    assert (doc["stages"][1]["approval"], doc["stages"][0]["wait"]) == (True, 30.0)
    # Before the walker's first step there is nothing to print.
    assert (
        wave_json(model.Configuration("mesh", "r", configuration.ref, "", "", 60.0, {}, (), WAVE), members)
        is None
    )
