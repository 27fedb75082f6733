"""Rollouts for real: the bookstore with real Envoy sidecars, a v2 whose behaviour each test sets,
`gitmesh apply` starting a rollout and `gitmesh rollout run` walking it from the sidecars' stats.

Intervals are short (seconds). Every wait polls a condition; assertions are on what happened
(the persisted history, the traffic each step saw), not on how fast.
"""

from __future__ import annotations

import collections
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import Demo, eventually, free_port, stop_process
from gitmesh.rollout.model import Phase
from tests.integration.rollouts import (
    LATENCY_POLICY,
    SPLIT,
    Traffic,
    Webhook,
    apply_head,
    bad_canary,
    commit_split,
    demo,
    live_weights,
    roll_out,
    rollout,
    start_runner,
    v2_share,
    wait_for,
    webhook,
)

pytestmark = pytest.mark.integration
__all__ = ["demo", "webhook"]  # fixtures, used by name


def test_healthy_v2_walks_every_step_to_the_target(demo: Demo, webhook: Webhook, tmp_path: Path) -> None:
    commit_split(demo, 0, 100)
    with Traffic(demo) as traffic:
        output = apply_head(demo, webhook)
        assert "starts a rollout: 2 step(s) 90/10, 50/50, then 0/100" in output, output
        assert live_weights(demo) == {"bookstore-v1": 90, "bookstore-v2": 10}
        runner = start_runner(demo, tmp_path, webhook)
        try:
            done = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED}, hook=webhook)
        finally:
            stop_process(runner)
        time.sleep(2)  # traffic on the target for the last window below
    assert done.phase is Phase.SUCCEEDED, done.reason
    assert live_weights(demo) == {"bookstore-v1": 0, "bookstore-v2": 100}
    # The shares the caller saw follow each step: between one change of weights and the next,
    # once the sidecars have the new split (1 s), v2's share is its step's weight.
    changes = [p for i, p in enumerate(done.history) if i == 0 or p.weights != done.history[i - 1].weights]
    assert [p.weights["bookstore-v2"] for p in changes] == [10, 50, 100]
    ends = [p.at for p in changes[1:]] + [traffic.seen[-1][0]]
    for point, end in zip(changes, ends, strict=True):
        window = traffic.between(point.at + 1.0, end)
        share = point.weights["bookstore-v2"] / 100
        # Envoy picks each request's backend at random: allow four standard deviations.
        spread = max(0.05, 4 * math.sqrt(share * (1 - share) / max(1, len(window))))
        assert len(window) >= 50, (point, len(window))
        assert abs(v2_share(window) - share) <= spread, (point, v2_share(window), len(window))
    assert webhook.phases()[0] == "Progressing" and webhook.phases()[-1] == "Succeeded", webhook.phases()


def test_v2_answering_half_500s_is_rolled_back(demo: Demo, webhook: Webhook, tmp_path: Path) -> None:
    failed, episode = bad_canary(demo, webhook, tmp_path, "--push-reverts", str(demo.repo))
    assert set(demo.shares(50)) == {"bookstore-v1"}
    assert failed.phase is Phase.FAILED
    assert "success rate" in failed.reason and "below 95%" in failed.reason, failed.reason
    assert failed.failures == 2 and failed.step == 0  # rolled back at the second failed check of step 1
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
    checks = [p for p in failed.history if p.success_rate]
    assert len(checks) == 2 and all(p.success_rate["bookstore-v2"] < 95 for p in checks)
    # How long that took, and what it cost, is measured by bench/rollout_bench.py; here only that
    # the failures stayed a small share of the traffic (v2 had 10% of it, half of that failing).
    failures = sum(status != 200 for _, status, _ in episode) / len(episode)
    assert failures < 0.1, f"{failures:.2%} of {len(episode)} requests failed"
    assert webhook.phases() == ["Progressing", "Failed"]
    assert webhook.events[-1]["analysis"]["verdict"] == "fail"
    # A revert waits on a branch for a person to open the pull request; main is untouched.
    branch = f"gitmesh/rollback/{failed.revision[:12]}"
    assert f"a revert is on branch {branch}" in failed.reason
    git = ["git", "-C", str(demo.repo)]
    shown = subprocess.run(
        [*git, "show", f"{branch}:mesh/bookstore/split.yaml"], capture_output=True, text=True
    )
    assert "weight: 100\n  - service: bookstore-v2\n    weight: 0" in shown.stdout, shown.stdout
    head = subprocess.run(
        [*git, "rev-parse", "main", f"{branch}^"], capture_output=True, text=True
    ).stdout.split()
    assert head == [failed.revision, failed.revision]

    # The failed target is not retried by applying the same commit again ...
    output = apply_head(demo, webhook)
    assert "not retried until a commit changes them" in output, output
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
    assert rollout(demo).phase is Phase.FAILED
    # ... the timeline draws it ...
    svg = tmp_path / "timeline.svg"
    result = CliRunner().invoke(
        cli, ["rollout", "timeline", SPLIT, "--store", str(demo.store), "--out", str(svg)]
    )
    assert result.exit_code == 0, result.output
    assert svg.read_text().count("<circle") == 4 and "Failed" in svg.read_text()  # 2 checks, v1 and v2
    # ... and gitmesh rollout retry walks it again, from the start.
    demo.apps["bookstore-v2"].error_rate = 0.0
    result = CliRunner().invoke(cli, ["rollout", "retry", "bookstore-split", "--store", str(demo.store)])
    assert result.exit_code == 0, result.output
    assert rollout(demo).phase is Phase.PROGRESSING and live_weights(demo)["bookstore-v2"] == 10


def test_v2_slower_than_the_latency_threshold_is_rolled_back(
    demo: Demo, webhook: Webhook, tmp_path: Path
) -> None:
    demo.apps["bookstore-v2"].delay = 0.4
    failed, _ = roll_out(demo, webhook, tmp_path, workers=4, policy=LATENCY_POLICY)
    assert failed.phase is Phase.FAILED
    assert "p99 latency" in failed.reason and "above 200 ms" in failed.reason, failed.reason
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}


def test_no_traffic_holds_then_fails_at_the_progress_deadline(
    demo: Demo, webhook: Webhook, tmp_path: Path
) -> None:
    commit_split(demo, 0, 100)
    apply_head(demo, webhook)
    runner = start_runner(demo, tmp_path, webhook)
    try:
        holding = wait_for(demo, {Phase.HOLDING, Phase.FAILED, Phase.SUCCEEDED}, hook=webhook)
        assert holding.phase is Phase.HOLDING
        assert "fewer than min-requests 5" in holding.reason, holding.reason
        assert live_weights(demo)["bookstore-v2"] == 10  # holding keeps the step
        failed = wait_for(demo, {Phase.FAILED, Phase.SUCCEEDED}, hook=webhook)
    finally:
        stop_process(runner)
    assert failed.phase is Phase.FAILED
    assert "progress deadline of 10s" in failed.reason, failed.reason
    assert failed.failures == 0  # no check failed: there was nothing to judge
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
    assert webhook.phases() == ["Progressing", "Holding", "Failed"]


def test_a_killed_runner_resumes_where_it_stopped(demo: Demo, webhook: Webhook, tmp_path: Path) -> None:
    commit_split(demo, 0, 100)
    with Traffic(demo):
        apply_head(demo, webhook)
        runner = start_runner(demo, tmp_path, webhook)
        try:
            eventually(lambda: rollout(demo), lambda r: r.step == 1, "the second step", 60)
        finally:
            runner.kill()
            runner.wait()
        before = rollout(demo)
        assert live_weights(demo) == {"bookstore-v1": 50, "bookstore-v2": 50}
        runner = start_runner(demo, tmp_path, webhook)
        try:
            done = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED}, hook=webhook)
        finally:
            stop_process(runner)
    assert done.phase is Phase.SUCCEEDED, done.reason
    assert done.started_at == before.started_at  # the same rollout, carried on, not restarted
    assert [p.weights["bookstore-v2"] for p in done.history if p.success_rate] == [50, 100]
    assert live_weights(demo) == {"bookstore-v1": 0, "bookstore-v2": 100}


def test_a_new_commit_mid_rollout_restarts_from_the_live_weights(demo: Demo, webhook: Webhook) -> None:
    commit_split(demo, 0, 100)
    apply_head(demo, webhook)
    assert live_weights(demo) == {"bookstore-v1": 90, "bookstore-v2": 10}
    plan = CliRunner().invoke(
        cli,
        ["plan", "--repo", str(demo.repo), "--path", "mesh", "--store", str(demo.store), "--source", "demo"],
    )
    assert "Rollout under way: bookstore/bookstore-split Progressing, step 1 of 2" in plan.output, plan.output
    commit_split(demo, 50, 50)
    plan = CliRunner().invoke(
        cli,
        ["plan", "--repo", str(demo.repo), "--path", "mesh", "--store", str(demo.store), "--source", "demo"],
    )
    assert "this revision restarts the rollout under way from the live weights" in plan.output, plan.output
    apply_head(demo, webhook)
    r = rollout(demo)
    assert r.stable == {"bookstore-v1": 90, "bookstore-v2": 10} and r.target == {
        "bookstore-v1": 50,
        "bookstore-v2": 50,
    }
    assert live_weights(demo) == {"bookstore-v1": 86, "bookstore-v2": 14}  # 10% of the way from 90/10
    assert collections.Counter(webhook.phases()) == {"Progressing": 2}


def test_gitmesh_run_starts_and_walks_a_committed_shift_from_its_sidecars_stats(
    demo: Demo, webhook: Webhook, tmp_path: Path
) -> None:
    """The whole loop in one process: `gitmesh run` follows the demo repo, a commit shifting the
    split starts a rollout, and the same process walks it, reading the stats of the sidecars
    connected to it (no addresses given)."""
    assert demo.gitmesh is not None
    stop_process(demo.gitmesh)  # the demo's plain ADS server gives way to the controller
    command = [
        *("run", "--store", str(demo.store), "--xds-address", f"127.0.0.1:{demo.xds_port}"),
        *("--repo", str(demo.repo), "--path", "mesh", "--source", "demo", "--interval", "1s"),
        *("--http-address", f"127.0.0.1:{free_port()}", "--rollout-webhook", webhook.url),
    ]
    with (tmp_path / "gitmesh-run.log").open("a") as log:
        demo.gitmesh = subprocess.Popen([sys.executable, "-m", "gitmesh", *command], stdout=log, stderr=log)
    commit_split(demo, 0, 100)
    with Traffic(demo):
        eventually(
            lambda: live_weights(demo)["bookstore-v2"], lambda w: w > 0, "the commit's first step applied"
        )
        done = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED}, hook=webhook)
    assert done.phase is Phase.SUCCEEDED, done.reason
    assert live_weights(demo) == {"bookstore-v1": 0, "bookstore-v2": 100}
    changes = [p for i, p in enumerate(done.history) if i == 0 or p.weights != done.history[i - 1].weights]
    assert [p.weights["bookstore-v2"] for p in changes] == [10, 50, 100]
    rates = [rate for p in done.history for rate in p.success_rate.values() if rate is not None]
    assert rates and min(rates) >= 95, done.history  # analysed on the traffic the sidecars counted
    assert webhook.phases()[0] == "Progressing" and webhook.phases()[-1] == "Succeeded", webhook.phases()
    # The controller's record: the commit applied (its first step), and nothing seen as drift since.
    history = CliRunner().invoke(cli, ["history", "--store", str(demo.store), "--output", "json"])
    assert '"applied"' in history.output, history.output
