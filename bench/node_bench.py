"""Benchmark: the test node (tests/node.py) at rest, and a Pod from `kubectl apply` to Running.

    python bench/node_bench.py [--pods 10] [--rest 30]

Starts the node (or reuses a running one, e.g. from `make cluster`), lets it sit
idle for ``--rest`` seconds, then reports the resident memory (VmRSS) of every
node process: the control plane, containerd, kubelet, kube-proxy, the
containerd shims and CoreDNS, which is the only pod at rest. Then it runs
``--pods`` times: `kubectl apply` of one Pod of the test app, and `kubectl wait`
until its phase is Running; the time is wall clock from just before the apply
to the wait's return (so it includes two kubectl start-ups, about 0.1 s each).
Each Pod is deleted before the next. A node it started, it tears down at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.node import NodeCluster, node, node_processes

NAMESPACE = "node-bench"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_at_rest(cluster: NodeCluster) -> dict[str, int]:
    """VmRSS in KiB of each node process, summed by command name."""
    totals: dict[str, int] = {}
    for pid, name in node_processes(cluster.directory).items():
        try:
            totals[name] = totals.get(name, 0) + _rss_kib(pid)
        except OSError:
            continue  # exited meanwhile
    return totals


def pod_start_seconds(cluster: NodeCluster, index: int) -> float:
    name = f"bench-{index}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": cluster.images.app, "imagePullPolicy": "Never"}],
        },
    }
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl(
        "-n",
        NAMESPACE,
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        f"pod/{name}",
        "--timeout=60s",
        timeout=70,
    )
    elapsed = time.monotonic() - started
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=true", timeout=70)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--rest", type=float, default=30.0)
    args = parser.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    with node() as cluster:
        if cluster.owned:
            print(
                f"node up in {cluster.timings['up']:.1f}s: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
            )
        time.sleep(args.rest)
        memory = memory_at_rest(cluster)
        for name, kib in sorted(memory.items(), key=lambda item: -item[1]):
            print(f"  {name:28} {kib / 1024:7.1f} MiB")
        print(f"  {'node total':28} {sum(memory.values()) / 1024:7.1f} MiB")
        cluster.kubectl("create", "namespace", NAMESPACE)
        try:
            times = [pod_start_seconds(cluster, i) for i in range(args.pods)]
        finally:
            cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
        print(
            f"kubectl apply -> Running, {len(times)} pods: median {statistics.median(times):.2f}s, "
            f"min {min(times):.2f}s, max {max(times):.2f}s"
        )
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
