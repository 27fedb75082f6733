"""Plan 1,000 objects against a real kube-apiserver where 10 changed: gitmesh vs kubectl diff --server-side.

    python bench/kube_plan_bench.py [--objects 1000] [--changed 10] [--repeat 5]

Starts the test control plane (tests/kube.py; binaries from testenv/build.sh),
installs gitmesh's CRDs, applies a generated mesh with gitmesh, changes a few
objects, then times, in the same run and on the same files:

- ``gitmesh plan --repo R --kubeconfig K`` (a fresh process each time), and
- ``kubectl diff --server-side --force-conflicts -R -f DIR``.

Both must report the same changed objects; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.kube import KubeEnv, build_binaries  # noqa: E402

GITMESH = [sys.executable, "-m", "gitmesh"]


def mesh(objects: int, changed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A mesh of about ``objects`` objects in namespaces of 50, and a copy with ``changed`` splits moved."""
    before: list[dict[str, Any]] = []
    ns_index = 0
    while len(before) < objects:
        ns = f"team-{ns_index:03d}"
        before.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for app in range(7):
            if len(before) >= objects:
                break
            name = f"app-{app}"
            for svc in (name, f"{name}-v1", f"{name}-v2"):
                before.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": svc, "namespace": ns},
                        "spec": {"selector": {"app": svc}, "ports": [{"name": "http", "port": 8080}]},
                    }
                )
            before.append(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}
            )
            before.append(
                {
                    "apiVersion": "split.smi-spec.io/v1alpha4",
                    "kind": "TrafficSplit",
                    "metadata": {"name": f"{name}-split", "namespace": ns},
                    "spec": {
                        "service": name,
                        "backends": [
                            {"service": f"{name}-v1", "weight": 90},
                            {"service": f"{name}-v2", "weight": 10},
                        ],
                    },
                }
            )
            before.append(
                {
                    "apiVersion": "specs.smi-spec.io/v1alpha4",
                    "kind": "HTTPRouteGroup",
                    "metadata": {"name": f"{name}-routes", "namespace": ns},
                    "spec": {"matches": [{"name": "read", "pathRegex": "/items", "methods": ["GET"]}]},
                }
            )
        ns_index += 1
    before = before[:objects]
    after = json.loads(json.dumps(before))
    splits = [o for o in after if o["kind"] == "TrafficSplit"][:changed]
    for s in splits:
        s["spec"]["backends"][0]["weight"], s["spec"]["backends"][1]["weight"] = 50, 50
    return before, after


def write_tree(root: Path, objs: list[dict[str, Any]]) -> None:
    if root.exists():
        shutil.rmtree(root)
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_ns.setdefault(o["metadata"].get("namespace") or o["metadata"]["name"], []).append(o)
    for ns, items in by_ns.items():
        (root / ns).mkdir(parents=True, exist_ok=True)
        (root / ns / "mesh.yaml").write_text(yaml.safe_dump_all(items, sort_keys=False))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def timed(argv: list[str], ok_codes: tuple[int, ...]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed, proc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gitmesh-kube-bench-"))
    env = KubeEnv(build_binaries(), work / "kube")
    try:
        env.start()
        cluster = env.add_cluster("bench")
        kubeconfig = str(cluster.kubeconfig)
        subprocess.run(
            [*GITMESH, "install", "crds", "--kubeconfig", kubeconfig], check=True, capture_output=True
        )

        before, after = mesh(args.objects, args.changed)
        repo = work / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        git(
            repo,
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        )
        write_tree(repo / "mesh", before)
        git(repo, "add", "-A")
        git(
            repo,
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
            "commit",
            "-q",
            "-m",
            "before",
        )
        source = ["--repo", str(repo), "--path", "mesh", "--kubeconfig", kubeconfig]
        start = time.perf_counter()
        subprocess.run([*GITMESH, "apply", *source], check=True, capture_output=True)
        apply_seconds = time.perf_counter() - start
        write_tree(repo / "mesh", after)
        git(repo, "add", "-A")
        git(
            repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "after"
        )

        ours, cold, theirs = [], [], []
        ours_changed: set[str] = set()
        theirs_changed: set[str] = set()
        for _ in range(args.repeat):
            seconds, proc = timed([*GITMESH, "plan", *source, "--output", "json"], (0,))
            ours.append(seconds)
            plan = json.loads(proc.stdout)
            ours_changed = {
                f"{c['object']['kind']}/{c['object']['namespace']}/{c['object']['name']}"
                for c in plan["changes"]
                if c["action"] != "no-op"
            }
            # A source with no inventory yet has no applied hashes to trust: every object is dry-run.
            seconds, proc = timed([*GITMESH, "plan", *source, "--source", "fresh", "--output", "json"], (0,))
            cold.append(seconds)
            seconds, proc = timed(
                [
                    "kubectl",
                    f"--kubeconfig={kubeconfig}",
                    "diff",
                    "--server-side",
                    "--force-conflicts",
                    "-R",
                    "-f",
                    str(repo / "mesh"),
                ],
                (0, 1),
            )
            theirs.append(seconds)
            theirs_changed = {
                f"{k}/{ns}/{n}"
                for k, ns, n in re.findall(
                    r"^\+\+\+ \S+/[^/\s]*?\.?([A-Za-z]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\s", proc.stdout, re.M
                )
            }
        if ours_changed != theirs_changed or len(ours_changed) != args.changed:
            raise SystemExit(
                f"disagreement: gitmesh {sorted(ours_changed)} vs kubectl {sorted(theirs_changed)}"
            )
        g, k = statistics.median(ours), statistics.median(theirs)
        print(f"objects {len(after)}, changed {args.changed}, repeats {args.repeat}")
        print(f"initial gitmesh apply of {len(before)} objects: {apply_seconds:.2f} s")
        print(
            f"gitmesh plan:                      median {g:.2f} s  (min {min(ours):.2f}, max {max(ours):.2f})"
        )
        print(
            f"kubectl diff --server-side:        median {k:.2f} s"
            f"  (min {min(theirs):.2f}, max {max(theirs):.2f})"
        )
        c = statistics.median(cold)
        spread = f"(min {min(cold):.2f}, max {max(cold):.2f})"
        print(f"gitmesh plan, every object dry-run: median {c:.2f} s  {spread}")
        print(f"ratio kubectl/gitmesh:             {k / g:.1f}x (every object dry-run: {k / c:.1f}x)")
    finally:
        env.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
