"""Benchmark: what sidecar injection adds to a pod on the test node (tests/node.py): the time from
`kubectl apply` to Ready, and the sidecar's memory at rest.

    python bench/inject_bench.py [--pods 8] [--rest 20]

Starts the node (or reuses a running one). ``--pods`` times, alternately, one Pod of the test app
with an HTTP readiness probe (period 1 s) as written, and the same Pod through `gitmesh inject`
(capture init container, Envoy as a native sidecar, the probe through the sidecar's health port);
each from just before `kubectl apply` to the return of `kubectl wait --for=condition=Ready`, then
deleted. Then one injected Pod sits for ``--rest`` seconds and the VmRSS of its Envoy is read. The
sidecar has no xDS server to reach (gitmesh is not installed): this is its cost at rest, with the
static bootstrap alone. A node it started, it tears down at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitmesh.cli import cli
from tests.node import NodeCluster, node

NAMESPACE = "inject-bench"


def _pod(cluster: NodeCluster, name: str, injected: bool) -> str:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": cluster.images.app,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }
    if not injected:
        return json.dumps(pod)
    images = ["--proxy-image", cluster.images.envoy, "--init-image", cluster.images.gitmesh]
    result = CliRunner().invoke(cli, ["inject", "-f", "-", *images], input=yaml.safe_dump(pod))
    if result.exit_code:
        raise RuntimeError(result.output)
    return result.output


def ready_seconds(cluster: NodeCluster, name: str, injected: bool, keep: bool = False) -> float:
    manifest = _pod(cluster, name, injected)
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=manifest)
    cluster.kubectl(
        "-n", NAMESPACE, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s", timeout=100
    )
    elapsed = time.monotonic() - started
    if not keep:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=true", timeout=70)
    return elapsed


def envoy_rss_kib() -> list[int]:
    """VmRSS of every Envoy running in a pod (KiB)."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "envoy" or "/kubepods" not in (
                entry / "cgroup"
            ).read_text():
                continue
            status = (entry / "status").read_text().splitlines()
        except OSError:
            continue  # exited meanwhile
        sizes += [int(line.split()[1]) for line in status if line.startswith("VmRSS:")]
    return sizes


def _summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f}s, min {min(times):.2f}s, max {max(times):.2f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--rest", type=float, default=20.0)
    args = parser.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    with node() as cluster:
        cluster.kubectl("create", "namespace", NAMESPACE)
        try:
            plain: list[float] = []
            injected: list[float] = []
            for i in range(args.pods):
                plain.append(ready_seconds(cluster, f"plain-{i}", injected=False))
                injected.append(ready_seconds(cluster, f"injected-{i}", injected=True))
            print(f"apply -> Ready, {args.pods} pods each")
            print(f"  as written: {_summary(plain)}")
            print(f"  injected:   {_summary(injected)}")
            print(f"  added (medians): {statistics.median(injected) - statistics.median(plain):.2f}s")
            ready_seconds(cluster, "at-rest", injected=True, keep=True)
            time.sleep(args.rest)
            mib = [round(kib / 1024, 1) for kib in envoy_rss_kib()]
            print(f"sidecar Envoy VmRSS after {args.rest:.0f}s at rest: {mib} MiB")
        finally:
            cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
