"""The bookstore set up for rollouts: a split under a rollout policy, traffic, a webhook receiver,
`gitmesh apply` and `gitmesh rollout run` as a user runs them. Shared by the rollout tests."""

from __future__ import annotations

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
from gitmesh.demo import Demo, eventually, stop_process
from gitmesh.rollout import driver
from gitmesh.rollout.model import Phase, Rollout
from gitmesh.settings import embedded
from tests import bookstore

SPLIT = "bookstore/bookstore-split"
POLICY = {
    "steps": "10,50",
    "interval": "3s",
    "success-rate": "95",
    "min-requests": "5",
    "failure-threshold": "2",
    "progress-deadline": "10s",
}
# Only where latency is what is tested: on a loaded machine even a healthy answer can take 200 ms.
LATENCY_POLICY = POLICY | {"latency-p99": "200ms"}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    try:
        with bookstore.running(tmp_path, walk_rollouts=False) as d:
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
    """``caller`` (bookbuyer) calling the bookstore from ``workers`` threads; every answer kept with
    its time."""

    d: Demo
    workers: int = 1
    caller: str = "bookbuyer"
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
                status, body = self.d.buy(caller=self.caller)
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


def start_runner(d: Demo, workdir: Path, hook: Webhook, *args: str) -> subprocess.Popen[bytes]:
    """`gitmesh rollout run`, reading bookbuyer's sidecar stats unless ``args`` name --prometheus."""
    sidecar = ("--envoy-admin", f"127.0.0.1:{d.sidecars['bookbuyer'].admin_port}")
    source = () if "--prometheus" in args else sidecar
    with (workdir / "rollout-run.log").open("a") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitmesh",
                "rollout",
                "run",
                "--store",
                str(d.store),
                *source,
                *args,
                *hook.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def apply_head(d: Demo, hook: Webhook) -> str:
    apply = ["apply", "--repo", str(d.repo), "--path", demo_mod.MESH_PATH, "--source", "demo"]
    result = CliRunner().invoke(cli, [*apply, "--store", str(d.store), "--webhook", hook.url])
    assert result.exit_code == 0, result.output
    return result.output


def rollout(d: Demo) -> Rollout:
    store = embedded(d.store)
    try:
        return driver.load(store)[SPLIT]
    finally:
        store.close()


def live_weights(d: Demo) -> dict[str, int]:
    store = embedded(d.store)
    try:
        (obj,) = [
            o.obj
            for r, o in store.objects.list().items()
            if r.kind == "TrafficSplit" and driver.split_key(r) == SPLIT
        ]
        return driver.weights_of(obj)
    finally:
        store.close()


def wait_for(d: Demo, phases: set[Phase], timeout: float = 90, hook: Webhook | None = None) -> Rollout:
    """The rollout once in one of ``phases``; with ``hook``, once the hook has been told of it too (the
    runner posts after it saves, so stopping it at once could lose the notice)."""
    r = eventually(lambda: rollout(d), lambda r: r.phase in phases, f"rollout reaching {phases}", timeout)
    if hook is not None:
        eventually(hook.phases, lambda p: bool(p) and p[-1] == str(r.phase), f"the webhook told of {r.phase}")
    return r


def v2_share(answers: list[tuple[float, int, str]]) -> float:
    return sum(body == "bookstore-v2" for _, _, body in answers) / max(1, len(answers))


def roll_out(
    d: Demo,
    hook: Webhook,
    workdir: Path,
    *runner_args: str,
    workers: int = 1,
    policy: dict[str, str] = POLICY,
) -> tuple[Rollout, list[tuple[float, int, str]]]:
    """Commit everything to v2, apply it and run the rollout to its end under bookbuyer's traffic:
    the rollout's end, and every answer from the apply until all of them come from one version."""
    commit_split(d, 0, 100, policy=policy)
    with Traffic(d, workers) as traffic:
        started = time.time()
        apply_head(d, hook)
        runner = start_runner(d, workdir, hook, *runner_args)
        try:
            end = wait_for(d, {Phase.SUCCEEDED, Phase.FAILED}, hook=hook)
        finally:
            stop_process(runner)
        eventually(lambda: len(d.shares(50)), lambda n: n == 1, "all traffic on one version")
        return end, traffic.between(started, time.time())


def bad_canary(
    d: Demo, hook: Webhook, workdir: Path, *runner_args: str
) -> tuple[Rollout, list[tuple[float, int, str]]]:
    """v2 answers half its requests with 500s."""
    d.apps["bookstore-v2"].error_rate = 0.5
    return roll_out(d, hook, workdir, *runner_args)
