"""The rollout core, without I/O: policy, steps, analysis, the state machine, metrics arithmetic."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitmesh.cluster.port import Changes
from gitmesh.errors import RolloutError
from gitmesh.metrics import model as metrics_model
from gitmesh.plan import policy as policies
from gitmesh.plan.policy import DOC, PREFIX, Policy
from gitmesh.revision.load import RevisionFile, load_files
from gitmesh.rollout import driver, envoy_stats, machine, render, revert
from gitmesh.rollout.analysis import analyse
from gitmesh.rollout.metrics import Measurement
from gitmesh.rollout.model import Analysis, Phase, Rollout, Sample, Verdict
from gitmesh.rollout.prometheus import queries
from gitmesh.rollout.steps import gaining, losing, plan_steps, shares
from gitmesh.settings import embedded
from tests import factory, fakes
from tests.fakes import FakeObjects

V1, V2 = "web-v1", "web-v2"
POLICY = Policy(steps=(10, 25, 50), interval=10, success_rate=99, latency_p99=200, min_requests=20)


def policy_of(**annotations: str) -> Policy | None:
    obj = factory.split("shop", "web", "web", {V1: 100, V2: 0})
    obj["metadata"]["annotations"] = {PREFIX + k: v for k, v in annotations.items()}
    return policies.of(obj)


# --- policy -------------------------------------------------------------------------------------


def test_a_split_without_rollout_annotations_has_no_policy() -> None:
    obj = factory.split("shop", "web", "web", {V1: 1})
    obj["metadata"]["annotations"] = {"team": "shop"}
    assert policies.of(obj) is None


def test_policy_defaults_and_units() -> None:
    p = policy_of(interval="90s", **{"latency-p99": "0.5s", "progress-deadline": "5m"})
    assert p == Policy(interval=90, latency_p99=500, progress_deadline=300)
    assert policy_of(interval="2m") == Policy(interval=120)
    assert Policy(interval=3).deadline == 30  # ten intervals unless given


@pytest.mark.parametrize(
    ("size", "top", "steps"),
    [("20", None, (20, 40, 60, 80)), ("30", "80", (30, 60)), ("50", None, (50,)), ("25", "25", (25,))],
)
def test_step_size_and_max_become_steps(size: str, top: str | None, steps: tuple[float, ...]) -> None:
    keys = {"step-size": size} | ({"step-max": top} if top else {})
    p = policy_of(**keys)
    assert p is not None and p.steps == steps


def test_policy_round_trips_through_json() -> None:
    p = Policy(steps=(5, 50), interval=1.5, baseline_margin=2, queries={"requests": "sum(x)"})
    assert Policy.from_json(json.loads(json.dumps(p.to_json()))) == p


# --- steps --------------------------------------------------------------------------------------


def test_steps_are_percents_of_the_way_from_live_to_target() -> None:
    assert plan_steps({V1: 100, V2: 0}, {V1: 0, V2: 100}, POLICY) == (
        {V1: 90, V2: 10},
        {V1: 75, V2: 25},
        {V1: 50, V2: 50},
    )
    # From 75/25 to 0/100: 10% of the way is 67.5/32.5.
    assert plan_steps({V1: 3, V2: 1}, {V1: 0, V2: 1}, Policy(steps=(10,)))[0] in (
        {V1: 68, V2: 32},
        {V1: 67, V2: 33},
    )


def test_step_weights_are_shares_of_all_traffic_as_flagger_writes_them() -> None:
    policy = policy_of(**{"step-weights": "10,25,50"})
    assert policy is not None and policy.step_weights == (10, 25, 50)
    assert plan_steps({V1: 100, V2: 0}, {V1: 0, V2: 100}, policy) == (
        {V1: 90, V2: 10},
        {V1: 75, V2: 25},
        {V1: 50, V2: 50},
    )
    # Already at 20%, toward 40%: only 25 lies between, and it is 25% of all traffic, not of the way.
    assert plan_steps({V1: 80, V2: 20}, {V1: 60, V2: 40}, policy) == ({V1: 75, V2: 25},)
    # The same steps as percents of the way mean other weights: the two keys are not alike.
    assert plan_steps({V1: 80, V2: 20}, {V1: 60, V2: 40}, Policy(steps=(10, 25, 50)))[0] == {V1: 78, V2: 22}
    assert Policy.from_json(policy.to_json()) == policy
    before = {k: v for k, v in policy.to_json().items() if k != "step_weights"}  # a rollout saved earlier
    assert Policy.from_json(before).step_weights == ()


def test_a_backend_new_in_the_target_starts_from_zero() -> None:
    steps = plan_steps({V1: 1}, {V1: 1, V2: 1}, Policy(steps=(50,)))
    assert steps == ({V1: 75, V2: 25},)


def test_steps_that_round_to_the_start_or_the_target_are_dropped() -> None:
    assert plan_steps({V1: 99, V2: 1}, {V1: 98, V2: 2}, POLICY) == ()
    assert plan_steps({V1: 50, V2: 50}, {V1: 50, V2: 50}, POLICY) == ()


weights = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 1000), min_size=1, max_size=4
).filter(lambda w: sum(w.values()) > 0)
step_lists = st.lists(st.integers(1, 99), min_size=1, max_size=6, unique=True).map(sorted)


@given(weights, weights, step_lists)
def test_every_step_lies_between_live_and_target_and_moves_toward_it(
    live: dict[str, int], target: dict[str, int], percents: list[int]
) -> None:
    p = Policy(steps=tuple(float(x) for x in percents))
    steps = plan_steps(live, target, p)
    start, end = shares(live), shares(target)
    assert len(steps) <= len(percents)
    for step in steps:
        assert sum(step.values()) == 100
        assert set(step) == set(live) | set(target)
        for b, w in step.items():
            lo, hi = sorted((start.get(b, 0.0), end.get(b, 0.0)))
            assert lo - 1 <= w <= hi + 1, (b, w, lo, hi)
    for a, b in itertools.pairwise(steps):  # each backend moves one way only (rounding aside)
        for name in a:
            direction = 1 if end.get(name, 0.0) >= start.get(name, 0.0) else -1
            assert (b[name] - a[name]) * direction >= -1


def test_gaining_and_losing_backends() -> None:
    assert gaining({V1: 100, V2: 0}, {V1: 0, V2: 100}) == [V2]
    assert losing({V1: 100, V2: 0}, {V1: 0, V2: 100}) == [V1]
    assert gaining({V1: 1}, {V1: 1, V2: 1}) == [V2]
    assert losing({V1: 1, "old": 1}, {V1: 1}) == ["old"]


# --- analysis -----------------------------------------------------------------------------------


def judge(samples: dict[str, Sample], policy: Policy = POLICY) -> tuple[Verdict, str]:
    a = analyse(samples, [V2], [V1], policy, 10, 0.0)
    return a.verdict, "; ".join(a.reasons)


@pytest.mark.parametrize(
    ("v2", "verdict", "said"),
    [
        (Sample(100, 0, 12), Verdict.PASS, "success rate 100.0%, p99 12 ms over 100 requests"),
        (Sample(100, 2, 12), Verdict.FAIL, "success rate 98.0% is below 99% (2 of 100 failed)"),
        (Sample(100, 0, 450), Verdict.FAIL, "p99 latency 450 ms is above 200 ms"),
        (Sample(19, 0, 12), Verdict.HOLD, "19 requests in 10s, fewer than min-requests 20"),
        (Sample(0, 0), Verdict.HOLD, "0 requests"),
        (Sample(100, 0, None), Verdict.HOLD, "no latency data yet"),
        (Sample(100, 50, 450), Verdict.FAIL, "success rate 50.0%"),
    ],
    ids=["pass", "errors", "slow", "little-traffic", "no-traffic", "no-latency", "errors-and-slow"],
)
def test_analysis_verdicts(v2: Sample, verdict: Verdict, said: str) -> None:
    got, reasons = judge({V1: Sample(1000, 0, 10), V2: v2})
    assert got is verdict
    assert said in reasons


def test_a_backend_missing_from_the_samples_is_no_data() -> None:
    assert judge({V1: Sample(1000, 0, 10)})[0] is Verdict.HOLD


def test_baseline_margin_compares_with_the_losing_backends() -> None:
    p = Policy(success_rate=90, baseline_margin=1, min_requests=10)
    # 95% passes the threshold but is 4 points below v1's 99%.
    verdict, reasons = judge({V1: Sample(1000, 10, 10), V2: Sample(100, 5, 10)}, p)
    assert verdict is Verdict.FAIL and "more than 1 points below the baseline's 99.0%" in reasons
    verdict, reasons = judge({V1: Sample(1000, 10, 10), V2: Sample(100, 0, 30)}, p)
    assert (
        verdict is Verdict.FAIL and "p99 latency 30 ms is more than 1% above the baseline's 10 ms" in reasons
    )
    # Too little baseline traffic: nothing to compare with, the thresholds alone judge.
    assert judge({V1: Sample(3, 1, 10), V2: Sample(100, 5, 30)}, p)[0] is Verdict.PASS


# --- the state machine --------------------------------------------------------------------------


def started(policy: Policy = POLICY, now: float = 1000.0) -> Rollout:
    return machine.start("shop/web", "default", "abc", policy, {V1: 100, V2: 0}, {V1: 0, V2: 100}, now)


def verdict(v: Verdict, at: float) -> Analysis:
    return Analysis(v, (f"it was {v}",), {V2: {"requests": 50, "success_rate": 100.0, "p99_ms": 5}}, at)


def test_passing_checks_walk_every_step_to_the_target() -> None:
    r = started()
    assert (r.phase, r.weights) == (Phase.PROGRESSING, {V1: 90, V2: 10})
    assert not machine.due(r, 1009.9) and machine.due(r, 1010)
    seen = [r.weights[V2]]
    now = 1010.0
    while r.phase.active:
        r = machine.advance(r, verdict(Verdict.PASS, now), now)
        seen.append(r.weights[V2])
        now += 10
    assert seen == [10, 25, 50, 100]
    assert r.phase is Phase.SUCCEEDED and r.weights == r.target
    assert [p.phase for p in r.history][-1] is Phase.SUCCEEDED


def test_failed_checks_up_to_the_threshold_roll_back() -> None:
    r = started(Policy(steps=(10, 50), interval=10, failure_threshold=2))
    r = machine.advance(r, verdict(Verdict.FAIL, 1010), 1010)
    assert (r.phase, r.failures, r.weights[V2]) == (Phase.PROGRESSING, 1, 10)
    assert r.next_check_at == 1020
    r = machine.advance(r, verdict(Verdict.FAIL, 1020), 1020)
    assert (r.phase, r.weights) == (Phase.FAILED, {V1: 100, V2: 0})
    assert r.reason == "2 failed check(s): it was fail"
    with pytest.raises(ValueError, match="nothing to advance"):
        machine.advance(r, verdict(Verdict.PASS, 1030), 1030)


def test_failures_count_across_steps() -> None:
    r = started(Policy(steps=(10, 50), interval=10, failure_threshold=2))
    for now, v in ((1010, Verdict.FAIL), (1020, Verdict.PASS), (1030, Verdict.FAIL)):
        r = machine.advance(r, verdict(v, now), now)
    assert r.phase is Phase.FAILED


def test_holding_is_neither_pass_nor_failure_until_the_deadline() -> None:
    r = started(Policy(steps=(10,), interval=10, progress_deadline=30))
    for now in (1010, 1020):
        r = machine.advance(r, verdict(Verdict.HOLD, now), now)
        assert (r.phase, r.failures, r.weights[V2]) == (Phase.HOLDING, 0, 10)
    r = machine.advance(r, verdict(Verdict.HOLD, 1030), 1030)
    assert r.phase is Phase.FAILED and r.weights == r.stable
    assert "within the progress deadline of 30s: it was hold" in r.reason
    # A pass after holding moves on, and the deadline counts from the new step.
    r = started(Policy(steps=(10, 50), interval=10, progress_deadline=30))
    r = machine.advance(r, verdict(Verdict.HOLD, 1010), 1010)
    r = machine.advance(r, verdict(Verdict.PASS, 1020), 1020)
    assert (r.phase, r.step, r.step_started_at) == (Phase.PROGRESSING, 1, 1020)


def test_promote_abort_retry_by_hand() -> None:
    r = started()
    assert machine.promote(r, 1001).weights == r.target
    aborted = machine.abort(r, 1001)
    assert (aborted.phase, aborted.weights) == (Phase.ABORTED, r.stable)
    with pytest.raises(ValueError, match="only a rollout under way"):
        machine.abort(aborted, 1002)
    with pytest.raises(ValueError, match="only a failed or aborted"):
        machine.retry(r, 1002)
    again = machine.retry(aborted, 1005)
    assert (again.phase, again.weights, again.failures, again.started_at) == (
        Phase.PROGRESSING,
        {V1: 90, V2: 10},
        0,
        1005,
    )
    assert len(again.history) == len(aborted.history) + 1


def test_a_new_target_restarts_from_the_live_weights() -> None:
    r = machine.advance(started(), verdict(Verdict.PASS, 1010), 1010)
    assert r.weights == {V1: 75, V2: 25}
    r2 = machine.retarget(r, "def", POLICY, r.weights, {V1: 50, V2: 50}, 1015)
    assert (r2.stable, r2.target, r2.revision, r2.step) == (r.weights, {V1: 50, V2: 50}, "def", 0)
    assert r2.weights == {V1: 73, V2: 27}  # 10% of the way is 72.5/27.5: a tie goes to the first backend


def test_no_intermediate_step_succeeds_at_once() -> None:
    r = machine.start("shop/web", "s", "r", POLICY, {V1: 99, V2: 1}, {V1: 98, V2: 2}, 0)
    assert (r.phase, r.weights) == (Phase.SUCCEEDED, {V1: 98, V2: 2})


def test_rollout_state_round_trips_through_json() -> None:
    r = machine.advance(started(), verdict(Verdict.FAIL, 1010), 1010)
    assert Rollout.from_json(json.loads(json.dumps(r.to_json()))) == r


# --- metrics arithmetic ---------------------------------------------------------------------------


def v2_stats(ok: int, bad: int) -> metrics_model.Reading:
    cluster = 'envoy_cluster_name="shop/web-v2|80"'
    return metrics_model.parse(
        f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",{cluster}}} {ok}\n'
        f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",{cluster}}} {bad}\n'
        f'envoy_cluster_upstream_rq_time_bucket{{{cluster},le="+Inf"}} {ok + bad}\n'
    )


def test_envoy_stats_give_each_backend_what_every_source_sent_it_since_the_kept_mark() -> None:
    first = {"a": ("shop/front", v2_stats(10, 0)), "b": ("shop/api", v2_stats(10, 0))}
    kept = envoy_stats.kept(json.loads(json.dumps(first)))  # as the rollout store gives it back
    later = {"a": ("shop/front", v2_stats(60, 50)), "b": ("shop/api", v2_stats(60, 50))}
    assert envoy_stats.samples(later, kept) == {"shop/web-v2": Sample(200, 100, 0.0)}
    old_mark = {"a": v2_stats(10, 0)}  # kept before readings named their source
    assert envoy_stats.samples(later, envoy_stats.kept(old_mark))["shop/web-v2"].requests == 100 + 110


def test_prometheus_queries_fill_in_the_backend_and_take_overrides() -> None:
    q = queries(Policy(), "shop/web-v2", 2.6)
    assert 'envoy_cluster_name=~"shop/web-v2\\\\|.*"' in q["requests"] and "[3s]" in q["requests"]
    custom = Policy(queries={"success-rate": 'my_rate{app="$backend"}[$interval]'})
    assert queries(custom, "shop/web-v2", 30)["success-rate"] == 'my_rate{app="shop/web-v2"}[30s]'


def test_an_abandoned_rollout_ends_without_touching_the_weights() -> None:
    r = machine.abandon(started(), "the split was deleted", 1001)
    assert (r.phase, r.weights, r.reason) == (Phase.ABORTED, {V1: 90, V2: 10}, "the split was deleted")


# --- rendering ----------------------------------------------------------------------------------


def failed_rollout() -> Rollout:
    r = started(Policy(steps=(10, 50), interval=10, failure_threshold=2))
    for now in (1010, 1020):
        r = machine.advance(r, verdict(Verdict.FAIL, now), now)
    return r


def test_status_lines_say_where_a_rollout_stands_and_why() -> None:
    lines = render.status_lines(failed_rollout(), 1030)
    assert lines[0] == "shop/web  Failed  (revision abc, source default)"
    assert "  weights     web-v1 100%  web-v2 0%" in lines
    assert "  failures    2 failed check(s); 2 roll back" in lines
    assert "    it was fail" in lines
    assert not any("next check" in line for line in lines)  # nothing is due once it has ended
    assert any(line.startswith("  next check  in 9s") for line in render.status_lines(started(), 1001))


def test_a_rollout_nobody_walks_says_it_is_stuck_and_why() -> None:
    r = started()  # its first check is due at 1000 + the interval
    due = r.next_check_at
    assert not any("stuck" in line for line in render.status_lines(r, due + render.STUCK_AFTER))
    lines = render.status_lines(r, due + render.STUCK_AFTER + 15)
    assert (
        f"  stuck       its check is {render.STUCK_AFTER + 15:.0f}s overdue: "
        "no gitmesh run or gitmesh rollout run is walking it" in lines
    )
    assert not any("next check" in line for line in lines)
    # An ended rollout is never stuck, however old.
    assert not any("stuck" in line for line in render.status_lines(failed_rollout(), due + 10_000))


def test_the_timeline_draws_each_backend_each_check_and_each_phase() -> None:
    svg = render.timeline_svg(failed_rollout())
    ElementTree.fromstring(svg)  # well-formed
    assert svg.count("<path ") == 2  # a weight line per backend
    assert svg.count("<circle ") == 2  # v2's success rate at each check (v1 was not sampled here)
    assert ">Progressing</text>" in svg and ">Failed</text>" in svg
    assert ">web-v1</text>" in svg and ">web-v2</text>" in svg


def test_the_timeline_columns_hold_each_weight_to_the_end_and_each_check_where_it_was() -> None:
    r = failed_rollout()
    columns = render.timeline_columns(r)
    seconds = columns["seconds"]
    assert seconds[0] == 0 and seconds == sorted(seconds) and len(seconds) == len(r.history) + 1
    weights = {s["label"]: s["values"] for s in columns["series"] if s["kind"] == "weight"}
    assert list(weights) == ["web-v1 weight", "web-v2 weight"]
    assert all(len(v) == len(seconds) for v in weights.values())
    assert weights["web-v2 weight"][0] == 10 and weights["web-v2 weight"][-1] == 0  # rolled back, held
    (checks,) = [s for s in columns["series"] if s["kind"] == "success"]
    assert checks["label"] == "web-v2 success rate" and checks["backend"] == 1
    assert [v is not None for v in checks["values"]] == [
        p.success_rate.get("web-v2") is not None for p in r.history
    ] + [False]
    assert [p["phase"] for p in columns["phases"]] == ["Progressing", "Failed"]
    json.dumps(columns)  # what the page is given


@given(
    st.lists(st.tuples(st.sampled_from(list(Verdict)), st.floats(0, 30)), max_size=30),
    st.integers(1, 4),
    st.one_of(st.none(), st.floats(10, 60)),
)
def test_any_sequence_of_checks_keeps_the_rollout_consistent(
    checks: list[tuple[Verdict, float]], threshold: int, deadline: float | None
) -> None:
    p = Policy(steps=(10, 25, 50), interval=10, failure_threshold=threshold, progress_deadline=deadline)
    r = started(p)
    now = r.started_at
    allowed = [dict(s) for s in r.steps]
    advanced = 0
    for v, late in checks:
        if not r.phase.active:
            break
        now = r.next_check_at + late  # a check is never early, and may be late
        before = r
        r = machine.advance(r, verdict(v, now), now)
        advanced += 1
        assert r.failures <= threshold
        assert r.step >= before.step  # never backwards
        if r.phase is Phase.FAILED:
            assert r.weights == r.stable
            assert v is Verdict.FAIL or now - before.step_started_at >= p.deadline
        elif r.phase is Phase.SUCCEEDED:
            assert v is Verdict.PASS and before.step == len(r.steps) - 1 and r.weights == r.target
        else:
            assert dict(r.weights) in allowed and r.next_check_at == now + p.interval
            assert (r.phase is Phase.HOLDING) == (v is Verdict.HOLD)
    assert len(r.history) == 1 + advanced  # every check is on the timeline


def test_a_revert_changes_only_the_weight_values() -> None:
    text = (
        "# the canary\n"
        "apiVersion: split.smi-spec.io/v1alpha4\n"
        "kind: TrafficSplit\n"
        "metadata: {name: web, namespace: shop}\n"
        "spec:\n"
        "  service: web\n"
        "  backends:\n"
        "  - service: web-v1\n"
        "    weight: 0   # was 100\n"
        "  - {service: web-v2, weight: '100'}\n"
        '  - {"service": "web-v3", "weight": 5}\n'
    )
    (m,) = load_files([RevisionFile("split.yaml", len(text), text.encode())]).manifests
    positions = {i: m.positions[("spec", "backends", i, "weight")] for i in range(3)}
    got = revert.revert_text(text, positions, {0: 100, 1: 0, 2: 0})
    assert got == text.replace("weight: 0 ", "weight: 100 ").replace("'100'", "0").replace(
        '"weight": 5', '"weight": 0'
    )
    with pytest.raises(RolloutError, match="no weight value at line 2"):
        revert.revert_text(text, {0: (2, 1)}, {0: 1})


def test_backends_written_as_dns_names_are_measured_under_their_service() -> None:
    class Metrics:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def measure(self, backends: Sequence[str], policy: Policy, window: float, mark: Any) -> Measurement:
            self.asked = list(backends)
            return Measurement({b: Sample(10, 0) for b in backends}, {})

    v1, v2 = "web-v1.shop", "web-v2.shop.svc.cluster.local"
    r = machine.start("shop/web", "default", "abc", POLICY, {v1: 100, v2: 0}, {v1: 0, v2: 100}, 1000.0)
    metrics = Metrics()
    measured = driver.Runner(embedded(":memory:"), metrics, lambda _: None).measure(r, 1010.0)
    assert metrics.asked == ["shop/web-v1", "shop/web-v2"]
    assert set(measured.samples) == {v1, v2}


def test_the_runner_writes_each_step_through_the_one_write_path() -> None:
    class Healthy:
        def measure(self, backends: Sequence[str], policy: Policy, window: float, mark: Any) -> Measurement:
            return Measurement({b: Sample(100, 0, 50) for b in backends}, {})

    objects = FakeObjects()
    settings = fakes.settings(objects)
    split = factory.split("shop", "web", "web", {V1: 100, V2: 0})
    split["metadata"]["annotations"] = {PREFIX + "steps": "10,25,50", PREFIX + "interval": "10s"}
    settings.write("default", "abc", "main", Changes(writes=(split,)))
    r = machine.start("shop/web", "default", "abc", POLICY, {V1: 100, V2: 0}, {V1: 0, V2: 100}, 1000.0)
    settings.state.rollouts.save(r.split, r.to_json())
    runner = driver.Runner(settings, Healthy(), lambda _: None)

    def live() -> tuple[dict[str, int], str]:
        (obj,) = objects.list().values()
        (entry,) = settings.state.inventories.get("default").values()
        return driver.weights_of(obj.obj), entry.resource_version

    runner.tick(1000.0)  # the first step's weights are written, as the source, into its inventory
    assert live() == ({V1: 90, V2: 10}, "2")
    runner.tick(1011.0)  # its window passed, healthy: the next step
    assert live() == ({V1: 75, V2: 25}, "3")
    assert driver.load(settings)["shop/web"].step == 1


def test_a_policy_takes_its_defaults_from_policy_alone() -> None:
    assert policy_of(**{"min-requests": "5"}) == Policy(min_requests=5)
    assert f"(default {Policy().interval:g}s)" in DOC
