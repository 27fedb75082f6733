"""Benchmark: what sidecar injection adds to a pod on the test node (tests/node.py): the time from
`kubectl apply` to Ready, and the sidecar's memory at rest.

    python bench/inject_bench.py [--pods 8] [--rest 20]

Starts the node (or reuses a running one) and installs gitmesh into it with injection
(`gitmesh install --proxy-image`), following a copy of examples/repo served from this host.
``--pods`` times, alternately, one Pod of the test app with an HTTP readiness probe (period 1 s)
opted out (``gitmesh.dev/inject: disabled``) and the same Pod injected by the webhook (the init
container trades the pod's token for its certificate and sets capture; Envoy as a native sidecar,
ready once it has its configuration; the probe through the sidecar's health port); each from just
before `kubectl apply` to the return of `kubectl wait --for=condition=Ready`, then deleted. Then one
injected Pod sits for ``--rest`` seconds and the VmRSS of its Envoy is read. gitmesh is uninstalled
at the end; a node it started, it tears down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitmesh.cli import cli
from gitmesh.inject.patch import INJECT
from tests.conftest import EXAMPLE_REPO
from tests.gitserver import GitHttpServer
from tests.node import NODE_IP, NodeCluster, node

NAMESPACE = "inject-bench"


def _pod(cluster: NodeCluster, name: str, injected: bool) -> str:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {INJECT: "enabled" if injected else "disabled"},
        },
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
    return json.dumps(pod)


@contextlib.contextmanager
def installed(cluster: NodeCluster) -> Iterator[None]:
    """gitmesh in the node with injection, following examples/repo; uninstalled after."""
    with tempfile.TemporaryDirectory() as scratch:
        repo, served = Path(scratch) / "repo", Path(scratch) / "served"
        shutil.copytree(EXAMPLE_REPO, repo / "mesh")
        git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@gitmesh.invalid"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "bookstore"], check=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(served / "mesh.git")], check=True)
        server = GitHttpServer(served, host=NODE_IP).start()
        kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
        images = ["--image", cluster.images.gitmesh, "--image-pull-policy", "Never"]
        options = [
            *images,
            "--proxy-image",
            cluster.images.envoy,
            "--repo",
            server.url("mesh.git"),
            "--path",
            "mesh",
        ]
        try:
            result = CliRunner().invoke(cli, ["install", *kubeconfig, *options])
            if result.exit_code:
                raise RuntimeError(result.output)
            deadline = time.monotonic() + 60
            while not all(w["clientConfig"].get("caBundle") for w in _webhooks(cluster)):
                if time.monotonic() > deadline:
                    raise RuntimeError("no replica published the injection webhook's caBundle")
                time.sleep(0.5)
            yield
        finally:
            CliRunner().invoke(cli, ["uninstall", *kubeconfig])
            cluster.kubectl("delete", "namespace", "gitmesh-system", "--ignore-not-found", "--wait=false")
            server.stop()


def _webhooks(cluster: NodeCluster) -> list[dict[str, Any]]:
    found = cluster.kubectl(
        "get", "mutatingwebhookconfiguration", "gitmesh-inject", "-o", "json", check=False
    )
    return list(json.loads(found.stdout)["webhooks"]) if found.returncode == 0 else [{"clientConfig": {}}]


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
    with node() as cluster, installed(cluster):
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
