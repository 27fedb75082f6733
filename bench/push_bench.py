"""From `git push` to applied, and to the Envoys holding the new config, with the webhook.

    python bench/push_bench.py [--pushes 10] [--keep]

Runs the demo's bookstore for real (gitmesh.demo: five apps, five Envoy sidecars), but with
``gitmesh run`` as the controller: it follows a bare Git repository over ``file://`` with a poll
interval of an hour, so only the webhook brings a change in. Then, ``--pushes`` times:

1. commit a new bookstore split (weights alternate between two settings) in a clone;
2. t0; ``git push`` to the bare repository; POST a signed GitHub ``push`` event to the
   controller's ``/hook`` (what a Git host does after a push);
3. poll the controller's ``/status`` every 10 ms until the commit is its last applied
   revision (t_applied), and every sidecar's ``/config_dump`` until each routes bookstore
   traffic with the new weights (t_envoys, when the last one has them).

It prints each push and the median, p90 and max of: the push itself (``git push`` plus the
webhook request), t_applied - t0 and t_envoys - t0.

With ``--flood N``, half the pushes are timed, then N hostile requests hit the HTTP port, 200 at a
time (unsigned and wrongly signed webhooks, a webhook for no source, reconciles without a token,
status reads), then the other half: the controller's RSS before, at its peak and after the flood,
the answers by status (a reset or other error counted as such), and the pushes' figures before and
after, side by side.

With ``--scrape S``, pushes go in pairs without and with a scraper reading every sidecar's stats
into the metrics model every S seconds (as ``gitmesh top`` and ``gitmesh run``'s rollouts do, with
the same filtered query), and the figures of each are printed side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from gitmesh import demo  # noqa: E402
from gitmesh.metrics import envoy, model  # noqa: E402
from gitmesh.sync import webhook  # noqa: E402

SECRET = b"bench-secret-of-32-bytes-at-least"
SPLIT_FILE = Path(demo.MESH_PATH) / "bookstore" / "split.yaml"
V1 = "bookstore/bookstore-v1|14001"  # the cluster name scheme of the README


class PushedDemo(demo.Demo):
    """The bookstore, with ``gitmesh run`` applying what is pushed to a bare repository."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.remote = workdir / "remote.git"
        self.http_port = demo.free_port()

    def apply(self) -> str:
        return self.head()  # the controller applies: nothing is written to the store here

    def start_gitmesh(self) -> None:
        subprocess.run(["git", "clone", "-q", "--bare", str(self.repo), str(self.remote)], check=True)
        subprocess.run(["git", "-C", str(self.repo), "remote", "add", "origin", str(self.remote)], check=True)
        (self.workdir / "secret").write_bytes(SECRET)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with (self.workdir / "gitmesh-run.log").open("a") as log:
            self.gitmesh = subprocess.Popen(
                [
                    *(sys.executable, "-m", "gitmesh", "run", "--store", str(self.store)),
                    *("--repo", f"file://{self.remote}", "--branch", "main", "--path", demo.MESH_PATH),
                    *("--interval", "1h", "--webhook-secret-file", str(self.workdir / "secret")),
                    *("--http-address", f"127.0.0.1:{self.http_port}"),
                    *("--xds-address", f"127.0.0.1:{self.xds_port}"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        demo.eventually(self.applied_revision, lambda sha: sha == self.head(), "the first apply", 60)

    def applied_revision(self) -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/status", timeout=5) as r:
            (source,) = json.loads(r.read())["sources"]
        return source["lastAppliedRevision"]  # type: ignore[no-any-return]

    def push(self, v1_weight: int) -> str:
        """Commit a split giving v1 ``v1_weight`` of 100, push it, send the webhook; the commit."""
        split = self.repo / SPLIT_FILE
        lines = split.read_text().splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if line.strip().startswith("weight:")]
        for i, weight in zip(at, (v1_weight, 100 - v1_weight), strict=True):
            lines[i] = f"{lines[i].split(':')[0]}: {weight}\n"
        split.write_text("".join(lines))
        git = ["git", "-C", str(self.repo), "-c", "user.name=bench", "-c", "user.email=bench@gitmesh.invalid"]
        subprocess.run([*git, "commit", "-qam", f"v1 at {v1_weight}%"], check=True)
        return self.head()

    def send(self) -> None:
        subprocess.run(["git", "-C", str(self.repo), "push", "-q", "origin", "main"], check=True)
        body = json.dumps(
            {"ref": "refs/heads/main", "repository": {"clone_url": f"file://{self.remote}"}}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/hook",
            data=body,
            headers={webhook.EVENT_HEADER: "push", webhook.SIGNATURE_HEADER: webhook.signature(SECRET, body)},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 202, r.status


def v1_weights(sidecar: demo.Sidecar) -> set[int]:
    """The weights this sidecar's routes give bookstore v1 (empty if it has no route to it)."""
    found: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == V1 and "weight" in node:
                found.add(int(node["weight"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(sidecar.admin("/config_dump?resource=dynamic_route_configs")))
    return found


def flood(d: PushedDemo, requests: int) -> None:
    """``requests`` hostile requests, 200 at a time; prints the answers and the controller's RSS."""
    body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": "file:///nowhere"}}).encode()
    kinds: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/hook", body, {webhook.EVENT_HEADER: "push"}),
        (
            "POST",
            "/hook",
            body,
            {webhook.EVENT_HEADER: "push", webhook.SIGNATURE_HEADER: "sha256=" + "0" * 64},
        ),
        (
            "POST",
            "/hook",
            body,
            {webhook.EVENT_HEADER: "push", webhook.SIGNATURE_HEADER: webhook.signature(SECRET, body)},
        ),
        ("POST", "/sources/default/reconcile", b"", {}),
        ("GET", "/status", b"", {}),
    ]

    def one(i: int) -> str:
        method, path, payload, headers = kinds[i % len(kinds)]
        connection = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
        try:
            connection.request(method, path, payload if method == "POST" else None, headers)
            return f"{path} {connection.getresponse().status}"
        except (OSError, http.client.HTTPException) as e:
            return f"{path} {type(e).__name__}"
        finally:
            connection.close()

    pid = d.gitmesh.pid
    before, peak, stop = rss_mib(pid), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        answers = Counter(pool.map(one, range(requests)))
    took = time.monotonic() - started
    stop.set()
    sampler.join()
    time.sleep(2)
    print(
        f"\nflood: {requests} requests in {took:.1f} s; controller RSS {before:.1f} MiB before, "
        f"{max(peak[0], before):.1f} at peak, {rss_mib(pid):.1f} after"
    )
    for answer, count in sorted(answers.items()):
        print(f"  {answer}: {count}")
    print()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work directory and print where")
    parser.add_argument("--flood", type=int, default=0, help="hostile requests between the two halves")
    parser.add_argument("--scrape", type=float, default=0, help="seconds between scrapes, every other pair")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gitmesh-push-bench-"))
    rows: list[tuple[float, float, float]] = []
    scraping = threading.Event()
    stop = threading.Event()
    try:
        with running(workdir) as d, scraper(d, args.scrape, scraping, stop):
            routed = [s for s in d.sidecars.values() if v1_weights(s)]
            print(f"{len(routed)} of {len(d.sidecars)} sidecars route to bookstore v1; load average {load()}")
            for i in range(args.pushes):
                if args.flood and i == args.pushes // 2:
                    flood(d, args.flood)
                weight = 10 if i % 2 == 0 else 90
                if args.scrape:  # pairs of pushes (both weights) without, then with
                    (scraping.set if (i // 2) % 2 else scraping.clear)()
                    time.sleep(args.scrape)
                sha = d.push(weight)
                t0 = time.monotonic()
                d.send()
                t_sent = time.monotonic()
                while d.applied_revision() != sha:
                    time.sleep(0.01)
                t_applied = time.monotonic()
                waiting = list(routed)
                while waiting:
                    waiting = [s for s in waiting if v1_weights(s) != {weight}]
                    if waiting:
                        time.sleep(0.01)
                t_envoys = time.monotonic()
                rows.append((t_sent - t0, t_applied - t0, t_envoys - t0))
                print(
                    f"push {i + 1:2}: {sha[:12]} v1 {weight:2}%  push+hook {rows[-1][0]:.3f} s  "
                    f"applied {rows[-1][1]:.3f} s  all Envoys {rows[-1][2]:.3f} s"
                )
                time.sleep(0.5)  # let the sidecars' ACKs settle before the next change
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{len(rows)} pushes; load average {load()}")
    halves = [("", rows)]
    if args.flood:
        halves = [
            (" (before the flood)", rows[: args.pushes // 2]),
            (" (after the flood)", rows[args.pushes // 2 :]),
        ]
    if args.scrape:
        halves = [
            (" (no scrape)", [r for i, r in enumerate(rows) if not (i // 2) % 2]),
            (f" (scrape every {args.scrape:g} s)", [r for i, r in enumerate(rows) if (i // 2) % 2]),
        ]
    for when, timed in halves:
        summarise(timed, when)


def summarise(rows: list[tuple[float, float, float]], when: str) -> None:
    for label, column in zip(
        ("push + webhook", "push -> applied", "push -> all Envoys"), zip(*rows, strict=True), strict=True
    ):
        ordered = sorted(column)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        print(
            f"{label + when:<38} median {statistics.median(ordered):.3f} s  p90 {p90:.3f} s  "
            f"max {ordered[-1]:.3f} s"
        )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def scraper(d: PushedDemo, every: float, scraping: threading.Event, stop: threading.Event) -> Iterator[None]:
    """Reads every sidecar into the metrics model each ``every`` seconds while ``scraping`` is set."""
    stats = envoy.EnvoyStats(lambda: {f"127.0.0.1:{s.admin_port}": name for name, s in d.sidecars.items()})

    def run() -> None:
        before = stats.read()
        while not stop.wait(every):
            if scraping.is_set():
                now = stats.read()
                model.edges(model.window(now, before), every)
                before = now

    thread = threading.Thread(target=run, daemon=True)
    if every:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if every:
            thread.join()


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[PushedDemo]:
    d = PushedDemo(workdir)
    try:
        d.start()
        yield d
    finally:
        d.close()


if __name__ == "__main__":
    main()
