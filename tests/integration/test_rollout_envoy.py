"""Rollouts for real: the bookstore with real Envoy sidecars, a v2 whose behaviour each test sets,
`gitmesh apply` starting a rollout and `gitmesh rollout run` walking it from the sidecars' stats.

Intervals are short (seconds). Every wait polls a condition; assertions are on what happened
(the persisted history, the traffic each step saw), not on how fast.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh import demo as demo_mod
from gitmesh.cli import cli
from gitmesh.cluster.local import LocalBackend
from gitmesh.demo import Demo, eventually, stop_process
from gitmesh.rollout import driver
from gitmesh.rollout.model import Phase, Rollout

pytestmark = pytest.mark.integration

SPLIT = "bookstore/bookstore-split"
POLICY = {
    "steps": "10,50",
    "interval": "3s",
    "success-rate": "95",
    "latency-p99": "200ms",
    "min-requests": "5",
    "failure-threshold": "2",
    "progress-deadline": "10s",
}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    try:
        with demo_mod.running(tmp_path) as d:
            commit_split(d, 100, 0, message="v1 only, under a rollout policy")
            d.applied = d.apply()  # the starting point goes in directly
            yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise


def commit_split(d: Demo, v1: int, v2: int, message: str = "", policy: dict[str, str] = POLICY) -> None:
    annotations = "".join(f'    rollout.gitmesh.dev/{k}: "{v}"\n' for k, v in policy.items())
    (d.repo / demo_mod.MESH_PATH / "bookstore" / "split.yaml").write_text(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n"
        "  name: bookstore-split\n  namespace: bookstore\n"
        + (f"  annotations:\n{annotations}" if annotations else "")
        + "spec:\n  service: bookstore\n  backends:\n"
        f"  - service: bookstore-v1\n    weight: {v1}\n  - service: bookstore-v2\n    weight: {v2}\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "commit", "-q", "-am", message or f"split {v1}/{v2}"], check=True)


class Webhook:
    """Collects the JSON notices gitmesh posts."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def args(self) -> list[str]:
        return ["--webhook", self.url, "--tick", "0.2"]

    def phases(self) -> list[str]:
        return [e["phase"] for e in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@dataclass
class Traffic:
    """bookbuyer calling the bookstore from ``workers`` threads; every answer kept with its time."""

    d: Demo
    workers: int = 1
    seen: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._run) for _ in range(self.workers)]
        for t in self.threads:
            t.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = self.d.buy()
            except OSError:
                status, body = 0, ""
            self.seen.append((time.time(), status, body))
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def between(self, start: float, end: float) -> list[tuple[float, int, str]]:
        return [s for s in self.seen if start <= s[0] < end]


def start_runner(d: Demo, workdir: Path, hook: Webhook, *metrics: str) -> subprocess.Popen[bytes]:
    source = metrics or ("--envoy-admin", f"127.0.0.1:{d.sidecars['bookbuyer'].admin_port}")
    with (workdir / "rollout-run.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gitmesh", "rollout", "run", "--store", str(d.store), *source, *hook.args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def apply_head(d: Demo, hook: Webhook) -> str:
    apply = ["apply", "--repo", str(d.repo), "--path", demo_mod.MESH_PATH, "--source", "demo"]
    result = CliRunner().invoke(cli, [*apply, "--store", str(d.store), "--webhook", hook.url])
    assert result.exit_code == 0, result.output
    return result.output


def rollout(d: Demo) -> Rollout:
    store = LocalBackend(d.store)
    try:
        return driver.load(store)[SPLIT]
    finally:
        store.close()


def live_weights(d: Demo) -> dict[str, int]:
    store = LocalBackend(d.store)
    try:
        (obj,) = [o.obj for r, o in store.list_managed().items() if r.kind == "TrafficSplit"]
        return driver.weights_of(obj)
    finally:
        store.close()


def wait_for(d: Demo, phases: set[Phase], timeout: float = 90) -> Rollout:
    return eventually(lambda: rollout(d), lambda r: r.phase in phases, f"rollout reaching {phases}", timeout)


def v2_share(answers: list[tuple[float, int, str]]) -> float:
    return sum(body == "bookstore-v2" for _, _, body in answers) / max(1, len(answers))


def test_healthy_v2_walks_every_step_to_the_target(demo: Demo, webhook: Webhook, tmp_path: Path) -> None:
    commit_split(demo, 0, 100)
    with Traffic(demo) as traffic:
        output = apply_head(demo, webhook)
        assert "starts a rollout: 2 step(s) 90/10, 50/50, then 0/100" in output, output
        assert live_weights(demo) == {"bookstore-v1": 90, "bookstore-v2": 10}
        runner = start_runner(demo, tmp_path, webhook)
        try:
            done = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})
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
        assert len(window) >= 50, (point, len(window))
        assert abs(v2_share(window) - point.weights["bookstore-v2"] / 100) <= 0.08, (point, v2_share(window))
    assert webhook.phases()[0] == "Progressing" and webhook.phases()[-1] == "Succeeded", webhook.phases()


def test_v2_answering_half_500s_is_rolled_back(demo: Demo, webhook: Webhook, tmp_path: Path) -> None:
    demo.apps["bookstore-v2"].error_rate = 0.5
    commit_split(demo, 0, 100)
    with Traffic(demo) as traffic:
        apply_head(demo, webhook)
        started = time.time()
        runner = start_runner(demo, tmp_path, webhook)
        try:
            failed = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED})
        finally:
            stop_process(runner)
        eventually(lambda: set(demo.shares(50)), lambda s: s == {"bookstore-v1"}, "all traffic back on v1")
        ended = time.time()
    assert failed.phase is Phase.FAILED
    assert "success rate" in failed.reason and "below 95%" in failed.reason, failed.reason
    assert failed.failures == 2 and failed.step == 0  # rolled back at the second failed check of step 1
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
    checks = [p for p in failed.history if p.success_rate]
    assert len(checks) == 2 and all(p.success_rate["bookstore-v2"] < 95 for p in checks)
    took = failed.history[-1].at - failed.started_at
    assert took < 2 * 3 + 3, f"rolled back {took:.1f}s after the start"  # 2 checks of 3 s, a tick late
    episode = traffic.between(started, ended)
    failures = sum(status != 200 for _, status, _ in episode) / len(episode)
    print(f"rolled back after {took:.1f}s; {failures:.2%} of {len(episode)} requests failed over the episode")
    assert failures < 0.1
    assert webhook.phases() == ["Progressing", "Failed"]
    assert webhook.events[-1]["analysis"]["verdict"] == "fail"

    # The failed target is not retried by applying the same commit again ...
    output = apply_head(demo, webhook)
    assert "not retried until a commit changes them" in output, output
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
    assert rollout(demo).phase is Phase.FAILED
    # ... the timeline draws it ...
    svg = tmp_path / "timeline.svg"
    result = CliRunner().invoke(
        cli, ["rollout", "timeline", SPLIT, "--store", str(demo.store), "-o", str(svg)]
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
    commit_split(demo, 0, 100)
    with Traffic(demo, workers=4):
        apply_head(demo, webhook)
        runner = start_runner(demo, tmp_path, webhook)
        try:
            failed = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED})
        finally:
            stop_process(runner)
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
        holding = wait_for(demo, {Phase.HOLDING, Phase.FAILED, Phase.SUCCEEDED})
        assert holding.phase is Phase.HOLDING
        assert "fewer than min-requests 5" in holding.reason, holding.reason
        assert live_weights(demo)["bookstore-v2"] == 10  # holding keeps the step
        failed = wait_for(demo, {Phase.FAILED, Phase.SUCCEEDED})
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
            done = wait_for(demo, {Phase.SUCCEEDED, Phase.FAILED})
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
        cli, ["plan", "--repo", str(demo.repo), "--path", "mesh", "--store", str(demo.store)]
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
