"""From a commit to every member of a fleet Compliant at it, as the hub sees it; `fleet status`; and
simulated agents reporting to one real hub.

    python bench/fleet_bench.py [--members 4] [--rounds 3] [--interval 10s] [--report-interval 1s]
                                [--simulated 1000] [--agents-for 120] [--status-runs 3]
                                [--before DIR]

Starts the test control plane (tests/kube.py; binaries from testenv/build.sh): one hub and
``--members`` member kube-apiservers on one etcd, the hub's CRDs, one FleetConfiguration (a base
and an overlay for half of the members), and one ``gitmesh run --fleet-hub`` agent process per
member, fetching every ``--interval``. Each round commits a new split weight and times until the
hub shows every member Compliant at that commit (read through the hub's API every 0.1 s), once
with each agent told by a signed webhook right after the commit and once waiting for its poll.
Then times ``gitmesh --help`` and ``gitmesh fleet status`` (a fresh process each, ``--status-runs``
times; with ``--before DIR`` each run is followed by one of the code in DIR, a ``git archive`` of an
earlier commit) over the members, and with ``--simulated N``
over N more FleetClusters, each with a report written as an agent writes it. With ``--agents-for
SECONDS`` those N then report as N agents would, every 30 s each (spread evenly over the 30 s, 16
requests at a time at most): the reports' latency and lateness, the 429s, and the CPU the hub's
kube-apiserver and the shared etcd used meanwhile; then one of them stops, and the time until
``fleet status`` reads it Unknown (its unknownAfter is 30 s) is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gitmesh import durations  # noqa: E402
from gitmesh.fleet import model  # noqa: E402
from gitmesh.fleet.hub import Hub  # noqa: E402
from gitmesh.kube.client import Client  # noqa: E402
from tests import factory as f  # noqa: E402
from tests.conftest import GitRepo  # noqa: E402
from tests.controller import RunningController  # noqa: E402
from tests.kube import KubeEnv, build_binaries  # noqa: E402

GITMESH = [sys.executable, "-m", "gitmesh"]
SECRET = b"a-webhook-secret-of-32-bytes-000"


def _files(v2: int) -> dict[str, str]:
    ns = "shop"
    base = [
        f.namespace(ns),
        f.service(ns, "web"),
        f.service(ns, "web-v1"),
        f.service(ns, "web-v2"),
        f.split(ns, "web-split", "web", {"web-v1": 100 - v2, "web-v2": v2}),
    ]
    canary = f.split(ns, "web-split", "web", {"web-v1": 50, "web-v2": 50})
    return {
        "fleet/base/kustomization.yaml": yaml.safe_dump({"resources": ["mesh.yaml"]}),
        "fleet/base/mesh.yaml": f.dump(*base),
        "fleet/canary/kustomization.yaml": yaml.safe_dump(
            {"resources": ["../base"], "patches": [{"path": "canary.yaml"}]}
        ),
        "fleet/canary/canary.yaml": f.dump(canary),
    }


def _gitmesh(*args: str | Path, tree: Path = REPO_ROOT) -> str:
    """``gitmesh ARGS`` in a fresh process, run from the code in ``tree``."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [*GITMESH, *map(str, args)], capture_output=True, text=True, env=env, cwd=tree, check=False
    )
    if done.returncode:
        raise SystemExit(f"gitmesh {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout


def _all_compliant(hub: Hub, head: str, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        seen = [model.seen(o, datetime.now(UTC)) for o in hub.clusters()]
        if seen and all(
            s.state is model.State.COMPLIANT and s.configurations[0].get("appliedRevision") == head
            for s in seen
        ):
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"not every member Compliant at {head[:12]} after {timeout:g}s")


def _time_status(kubeconfig: Path, members: int, before: Path | None, runs: int) -> None:
    """``fleet status`` (and ``--help``), each run of this tree followed by one of ``before``."""
    trees = {"": REPO_ROOT, **({f" [before: {before}]": before} if before else {})}
    for command in (["--help"], ["fleet", "status", "-o", "json"], ["fleet", "status", "-o", "text"]):
        times: dict[str, list[float]] = {label: [] for label in trees}
        for _ in range(runs):
            for label, tree in trees.items():
                started = time.monotonic()
                _gitmesh(
                    *command, *(["--kubeconfig", kubeconfig] if command != ["--help"] else []), tree=tree
                )
                times[label].append(time.monotonic() - started)
        for label, taken in times.items():
            over = f" over {members} members" if command != ["--help"] else ""
            print(
                f"gitmesh {' '.join(command)}{over} (a fresh process){label}: "
                f"median {statistics.median(taken):.2f} s, min {min(taken):.2f} s, max {max(taken):.2f} s"
            )


def _simulate(hub: Hub, count: int, head: str) -> None:
    """``count`` more FleetClusters with a Compliant report each, as agents would write them."""
    from gitmesh.fleet.hub import CLUSTERS, MANAGER, member_objects

    def one(i: int) -> None:
        name = f"simulated-{i:05d}"
        (cluster, *_) = member_objects(name, {"ring": "simulated"}, "30s")
        hub.client.apply(CLUSTERS.path(model.NAMESPACE, name), cluster, MANAGER, force=True)
        compliance = model.Compliance("mesh", model.State.COMPLIANT, "simulated", "fleet/base", head, head, 5)
        hub.report(name, model.report([compliance], datetime.now(UTC)))

    started = time.monotonic()
    hub.client.parallel(one, range(count))
    print(f"{count} simulated members written (object and report each) in {time.monotonic() - started:.1f} s")


REPORT_EVERY = 30.0  # seconds between one simulated agent's reports
REPORTING_AT_ONCE = 16


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _agents(hub: Hub, count: int, head: str, seconds: float, pids: dict[str, int]) -> None:
    """``count`` simulated agents reporting every REPORT_EVERY s for ``seconds``, then one goes silent."""
    from concurrent.futures import ThreadPoolExecutor

    from gitmesh.fleet.hub import CLUSTERS

    names = [f"simulated-{i:05d}" for i in range(count)]
    compliance = model.Compliance("mesh", model.State.COMPLIANT, "simulated", "fleet/base", head, head, 5)
    latencies: list[float] = []
    late: list[float] = []
    failures: list[str] = []
    silent = names[0]

    def report(name: str, due: float) -> None:
        started = time.monotonic()
        late.append(max(0.0, started - due))
        try:
            hub.report(name, model.report([compliance], datetime.now(UTC)))
        except Exception as e:  # counted: the hub's limits are what this measures
            failures.append(f"{type(e).__name__}: {str(e)[:80]}")
        latencies.append(time.monotonic() - started)

    unknown: list[tuple[datetime, datetime | None]] = []  # (when read Unknown, its last report)

    def look_for_unknown() -> None:
        """Read the silent one as ``fleet status`` would, every 0.5 s, until it is Unknown."""
        while True:
            seen = model.seen(hub.client.get(CLUSTERS.path(model.NAMESPACE, silent)), datetime.now(UTC))
            if seen.state is model.State.UNKNOWN:
                unknown.append((datetime.now(UTC), seen.last_report))
                return
            time.sleep(0.5)

    looking = threading.Thread(target=look_for_unknown, daemon=True)
    cpu_before = {k: _cpu_seconds(p) for k, p in pids.items()}
    begun = time.monotonic()
    with ThreadPoolExecutor(REPORTING_AT_ONCE) as pool:
        tick = 0
        while (due := begun + tick * REPORT_EVERY / count) < begun + seconds:
            i = tick % count
            time.sleep(max(0.0, due - time.monotonic()))
            if names[i] == silent and due - begun > seconds / 2:
                if not looking.is_alive() and not unknown:
                    looking.start()
            else:
                pool.submit(report, names[i], due)
            tick += 1
    elapsed = time.monotonic() - begun
    cpu = {k: _cpu_seconds(p) - cpu_before[k] for k, p in pids.items()}
    latencies.sort()
    print(
        f"{count} simulated agents reporting every {REPORT_EVERY:g} s for {elapsed:.0f} s: "
        f"{len(latencies)} reports ({len(latencies) / elapsed:.1f}/s), {len(failures)} failed "
        f"{sorted(set(failures))[:3]}; latency median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
        f"most late {max(late):.2f} s"
    )
    print(
        "CPU used meanwhile: "
        + ", ".join(f"{k} {v:.1f} s ({100 * v / elapsed:.0f} % of a core)" for k, v in cpu.items())
    )
    looking.join()
    ((read_at, last),) = unknown
    assert last is not None
    print(
        f"a silent agent read Unknown {(read_at - last).total_seconds():.1f} s after its last report "
        f"(unknownAfter 30 s, read every 0.5 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", default="10s", help="the agents' Git poll interval")
    parser.add_argument("--report-interval", default="1s")
    parser.add_argument("--simulated", type=int, default=0, help="then time fleet status with this many more")
    parser.add_argument("--agents-for", type=float, default=0, help="then have them report for this long (s)")
    parser.add_argument("--status-runs", type=int, default=3, help="fresh processes per fleet status timing")
    parser.add_argument(
        "--before",
        type=Path,
        help="also time the CLI from this tree (a git archive of an earlier commit), run for run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        repo = GitRepo(work / "repo")
        repo.commit("first", _files(0))
        secret_file = work / "webhook-secret"
        secret_file.write_bytes(SECRET)
        with KubeEnv(build_binaries(), work / "kube") as env:
            hub_cluster = env.add_cluster("hub")
            _gitmesh("install", "fleet-hub", "--kubeconfig", hub_cluster.kubeconfig)
            configuration = {
                "apiVersion": "gitmesh.dev/v1alpha1",
                "kind": "FleetConfiguration",
                "metadata": {"name": "mesh", "namespace": model.NAMESPACE},
                "spec": {
                    "repository": str(repo.path),
                    "ref": {"branch": "main"},
                    "path": "fleet/base",
                    "interval": args.interval,
                    "overlays": [
                        {"path": "fleet/canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}}
                    ],
                },
            }
            hub_cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
            agents: list[RunningController] = []
            try:
                for i in range(args.members):
                    member = env.add_cluster(f"member-{i}")
                    _gitmesh("install", "crds", "--kubeconfig", member.kubeconfig)
                    credentials = work / f"member-{i}.hub"
                    ring = "canary" if i % 2 == 0 else "main"
                    _gitmesh("fleet", "join", member.name, "-l", f"ring={ring}", "--out", credentials,
                             "--kubeconfig", hub_cluster.kubeconfig)  # fmt: skip
                    (work / member.name).mkdir()
                    agents.append(
                        RunningController(
                            work / member.name,
                            [
                                "--fleet-hub",
                                credentials,
                                "--fleet-cluster",
                                member.name,
                                "--kubeconfig",
                                member.kubeconfig,
                                "--fleet-report-interval",
                                args.report_interval,
                                "--webhook-secret-file",
                                secret_file,
                            ],
                        ).start()
                    )
                hub = Hub(Client.connect(str(hub_cluster.kubeconfig)))
                head = repo.git("rev-parse", "HEAD").strip()
                first = _all_compliant(hub, head)
                print(f"{args.members} members: first rollout to all Compliant in {first:.2f} s")
                results: dict[str, list[float]] = {"webhook": [], "poll": []}
                weight = 0
                for _ in range(args.rounds):
                    for how in results:
                        weight += 1
                        head = repo.commit(f"web-v2 at {weight}%", _files(weight))
                        if how == "webhook":
                            for agent in agents:
                                code, _ = agent.hook({"source": "mesh"}, SECRET, github=False)
                                assert code == 202, code
                        results[how].append(_all_compliant(hub, head))
                interval = durations.seconds(args.interval)
                for how, times in results.items():
                    every = f"poll every {interval:g}s, reports every {args.report_interval}"
                    figures = ", ".join(f"{t:.2f}" for t in times)
                    print(
                        f"commit -> all {args.members} Compliant ({how}, {every}): "
                        f"median {statistics.median(times):.2f} s, max {max(times):.2f} s ({figures})"
                    )
                _time_status(hub_cluster.kubeconfig, args.members, args.before, args.status_runs)
                if args.simulated:
                    _simulate(hub, args.simulated, head)
                    _time_status(
                        hub_cluster.kubeconfig, args.members + args.simulated, args.before, args.status_runs
                    )
                    times = []
                    for _ in range(3):
                        started = time.monotonic()
                        seen = [model.seen(o, datetime.now(UTC)) for o in hub.clusters()]
                        times.append(time.monotonic() - started)
                    print(
                        f"in-process: list {len(seen)} FleetClusters and read their states: "
                        f"median {statistics.median(times):.2f} s, max {max(times):.2f} s"
                    )
                    if args.agents_for:
                        assert hub_cluster._process is not None and env._etcd is not None
                        pids = {
                            "hub kube-apiserver": hub_cluster._process.popen.pid,
                            "etcd (shared)": env._etcd.popen.pid,
                        }
                        _agents(hub, args.simulated, head, args.agents_for, pids)
            finally:
                for agent in agents:
                    if agent.process and agent.process.poll() is None:
                        agent.stop()


if __name__ == "__main__":
    main()
