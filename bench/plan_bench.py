"""Benchmark: validate and plan a large generated mesh repo against the embedded store.

The target (from the issue): validate and plan a generated repo of 10,000
manifests against an embedded store holding the previous revision in under
3 s on the development machine.

What it does, all inside one temporary directory:

1. generates a realistic SMI mesh repo (N manifests over many namespaces,
   one file per app with several documents each) and commits it with real
   ``git`` as revision A;
2. changes about 1% of the objects (split weights, route regexes, added and
   removed TrafficTargets) and commits that as revision B;
3. applies A to a fresh embedded store (``gitmesh.settings.embedded``): setup, not timed;
4. times, ``--repeat`` times, the three stages of ``gitmesh plan``: read B
   from Git, ``pipeline.check`` (load + validate) and ``pipeline.plan``
   (diff against the store), and checks the plan finds exactly the changes
   made;
5. times the end-to-end command ``gitmesh plan --repo DIR --ref B --store DB``
   as a subprocess, which adds interpreter start-up and imports.

Run: ``python bench/plan_bench.py [--manifests 10000] [--repeat 5]``;
``--profile`` adds a profile of each stage (pyinstrument if installed, else cProfile);
``--no-gc`` repeats the timings with the garbage collector off, to show its share.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from gitmesh import pipeline  # noqa: E402
from gitmesh.plan.model import Action, Plan  # noqa: E402
from gitmesh.plan.validate import Validated  # noqa: E402
from gitmesh.settings import embedded  # noqa: E402
from gitmesh.sync.git import Revision, open_repo, read_revision  # noqa: E402

TARGET_SECONDS = 3.0
SOURCE = "default"
OBJECTS_PER_APP = 7  # ServiceAccount, 3 Services, TrafficSplit, HTTPRouteGroup, TrafficTarget
_APP_WORDS = (
    "catalog checkout payments search inventory shipping reviews accounts cart pricing orders auth notify "
    "media recs ledger billing profile gateway quotes"
)
APP_WORDS = tuple(_APP_WORDS.split())
CANARY_WEIGHTS = ((100, 0), (95, 5), (90, 10), (80, 20), (75, 25), (50, 50), (0, 100))
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# --- the generated repo --------------------------------------------------------------------------


@dataclass
class App:
    """One application: its identity, root + v1 + v2 services, canary split, routes and access."""

    namespace: str
    name: str
    callers: list[tuple[str, str]]  # (namespace, service account) allowed to call it
    weights: tuple[int, int]
    split_on_routes: bool  # the split is limited to this app's HTTPRouteGroup (header canary)
    api_version: str = "v1"  # in the `get` route's regex; revision B bumps some to v2
    access: bool = True  # has its main TrafficTarget
    metrics_access: bool = False  # has an extra TrafficTarget for the namespace's monitoring caller

    @property
    def path(self) -> str:
        return f"namespaces/{self.namespace}/{self.name}.yaml"


@dataclass
class Mesh:
    namespaces: dict[str, list[str]]  # namespace -> its caller service accounts
    apps: list[App] = field(default_factory=list)

    def count(self) -> int:
        return (
            len(self.namespaces)
            + sum(len(c) for c in self.namespaces.values())
            + sum(OBJECTS_PER_APP - (not a.access) + a.metrics_access for a in self.apps)
        )


def build_mesh(manifests: int, namespaces: int, rng: random.Random) -> Mesh:
    """Exactly ``manifests`` objects: per namespace a Namespace, apps of 7, caller accounts for the rest."""
    if manifests < namespaces * (1 + OBJECTS_PER_APP):
        raise SystemExit(
            f"--manifests {manifests} is too few for {namespaces} namespaces "
            f"(each needs at least {1 + OBJECTS_PER_APP})"
        )
    mesh = Mesh({})
    names = [f"team-{i:03d}" for i in range(namespaces)]
    per_ns = [manifests // namespaces + (i < manifests % namespaces) for i in range(namespaces)]
    app_names: dict[str, list[str]] = {}
    for ns, budget in zip(names, per_ns, strict=True):
        n_apps, n_callers = divmod(budget - 1, OBJECTS_PER_APP)
        app_names[ns] = [
            APP_WORDS[j % len(APP_WORDS)] + (f"-{j // len(APP_WORDS) + 1}" if j >= len(APP_WORDS) else "")
            for j in range(n_apps)
        ]
        mesh.namespaces[ns] = [
            ("monitoring", "frontend", "batch", "ops")[k % 4] + f"-{k // 4}" for k in range(n_callers)
        ]
    for i, ns in enumerate(names):
        apps = app_names[ns]
        next_ns = names[(i + 1) % len(names)]
        for j, app in enumerate(apps):
            callers = [(ns, apps[j - 1])] if len(apps) > 1 else []
            callers += [(ns, c) for c in mesh.namespaces[ns][:2]]
            if j < len(app_names[next_ns]):  # the same app of the next team calls it across namespaces
                callers.append((next_ns, app_names[next_ns][j]))
            if not callers:
                callers = [(ns, app)]
            mesh.apps.append(App(ns, app, callers, rng.choice(CANARY_WEIGHTS[1:-1]), j % 5 == 0))
    assert mesh.count() == manifests, (mesh.count(), manifests)
    return mesh


def app_documents(a: App) -> list[dict[str, Any]]:
    ns, name = a.namespace, a.name
    ports = [
        {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "port": 9090, "targetPort": "grpc", "appProtocol": "grpc"},
    ]

    def service(svc: str, version: str | None) -> dict[str, Any]:
        labels = {"app": name, "team": ns} | ({"version": version} if version else {})
        selector = {"app": name} | ({"version": version} if version else {})
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc, "namespace": ns, "labels": labels},
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
        }

    split_spec: dict[str, Any] = {"service": name}
    if a.split_on_routes:
        split_spec["matches"] = [{"kind": "HTTPRouteGroup", "name": f"{name}-routes"}]
    split_spec["backends"] = [
        {"service": f"{name}-v1", "weight": a.weights[0]},
        {"service": f"{name}-v2", "weight": a.weights[1]},
    ]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        },
        service(name, None),
        service(f"{name}-v1", "v1"),
        service(f"{name}-v2", "v2"),
        {
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": f"{name}-split", "namespace": ns, "labels": {"app": name}},
            "spec": split_spec,
        },
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": f"{name}-routes", "namespace": ns, "labels": {"app": name}},
            "spec": {
                "matches": [
                    {"name": "list", "pathRegex": f"/api/{name}/items", "methods": ["GET"]},
                    {
                        "name": "get",
                        "pathRegex": f"/api/{name}/{a.api_version}/items/[0-9a-f-]+",
                        "methods": ["GET", "HEAD"],
                    },
                    {
                        "name": "create",
                        "pathRegex": f"/api/{name}/items",
                        "methods": ["POST"],
                        "headers": {"content-type": "application/json.*"},
                    },
                    {
                        "name": "update",
                        "pathRegex": f"/api/{name}/items/[0-9a-f-]+",
                        "methods": ["PUT", "PATCH"],
                        "headers": [{"content-type": "application/json.*"}, {"x-request-id": "[0-9a-f-]+"}],
                    },
                    {"name": "health", "pathRegex": "/healthz", "methods": ["*"]},
                ]
            },
        },
    ]
    if a.access:
        docs.append(_target(a, f"{name}-access", ["list", "get", "create", "update"], a.callers))
    if a.metrics_access:
        monitor = [(ns, c) for c in ("monitoring-0",)]
        docs.append(_target(a, f"{name}-metrics-access", ["health"], monitor))
    return docs


def _target(a: App, name: str, matches: list[str], callers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": a.namespace, "labels": {"app": a.name}},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": a.name, "namespace": a.namespace},
            "rules": [{"kind": "HTTPRouteGroup", "name": f"{a.name}-routes", "matches": matches}],
            "sources": [{"kind": "ServiceAccount", "name": n, "namespace": s} for s, n in callers],
        },
    }


def render_files(mesh: Mesh) -> dict[str, str]:
    """Repo-relative path -> file text: a namespace.yaml per namespace and one file per app."""
    files = {
        "README.md": "Generated by bench/plan_bench.py: a mesh repo for the validate+plan benchmark.\n",
        ".gitmeshignore": "drafts/\n",
    }
    for ns, callers in mesh.namespaces.items():
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": ns}}}]
        docs += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": c, "namespace": ns}}
            for c in callers
        ]
        files[f"namespaces/{ns}/namespace.yaml"] = _yaml(
            f"Team {ns}: its namespace and client identities", docs
        )
    for a in mesh.apps:
        files[a.path] = _yaml(
            f"{a.name}: identity, services (root, v1, v2), canary split, routes, access", app_documents(a)
        )
    return files


def _yaml(comment: str, docs: list[dict[str, Any]]) -> str:
    body = "---\n".join(yaml.dump(d, Dumper=yaml.CSafeDumper, sort_keys=False) for d in docs)
    return f"# {comment}\n{body}"


@dataclass
class Expected:
    create: int
    update: int
    delete: int


def change_one_percent(mesh: Mesh, rng: random.Random) -> Expected:
    """Revision B: shift some splits, change some route regexes, add and remove some TrafficTargets."""
    total = mesh.count()
    n_weights, n_regex = max(1, total // 200), max(1, total // 400)
    n_add = n_remove = max(1, total // 800)
    eligible = [a for a in mesh.apps if a.access and not a.metrics_access]
    if len(eligible) < n_weights + n_add + n_remove:
        raise SystemExit("too few apps to change 1% of the objects; use more --manifests")
    picked = rng.sample(eligible, n_weights + n_add + n_remove)
    for a in picked[:n_weights]:
        a.weights = rng.choice([w for w in CANARY_WEIGHTS if w != a.weights])
    for a in rng.sample(mesh.apps, n_regex):
        a.api_version = "v2"
    for a in picked[n_weights : n_weights + n_add]:
        a.metrics_access = True
    for a in picked[n_weights + n_add :]:
        a.access = False
    return Expected(create=n_add, update=n_weights + n_regex, delete=n_remove)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for child in root.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


# --- measuring -----------------------------------------------------------------------------------


def read_stage(repo_dir: Path, sha: str) -> Revision:
    repo = open_repo(str(repo_dir))
    try:
        return read_revision(repo, sha)
    finally:
        repo.close()


def plan_stage(store: Path, revision: Revision, validated: Validated) -> Plan:
    backend = embedded(store)
    try:
        return pipeline.plan(revision, validated, backend, SOURCE)
    finally:
        backend.close()


def check_ok(validated: Validated, what: str) -> None:
    if not validated.ok:
        for d in validated.errors[:20]:
            print(f"  {d.location}: {d.code} {d.path}: {d.message}", file=sys.stderr)
        raise SystemExit(f"the generated {what} is invalid: {len(validated.errors)} error(s)")


@dataclass
class Timing:
    """Seconds of each run of one stage: wall clock, CPU (this process) and inside the garbage collector."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    gc: list[float] = field(default_factory=list)

    def row(self, label: str) -> str:
        cols = [statistics.median(self.wall), min(self.wall), max(self.wall)]
        cols += [statistics.median(x) if x else float("nan") for x in (self.cpu, self.gc)]
        return f"  {label:<30}" + "".join(f"{c:>8.3f}s" if c == c else f"{'-':>9}" for c in cols)

    def add(self, *parts: Timing) -> None:
        """Append the sum of the last run of each of ``parts``."""
        self.wall.append(sum(p.wall[-1] for p in parts))
        self.cpu.append(sum(p.cpu[-1] for p in parts))
        self.gc.append(sum(p.gc[-1] for p in parts))


HEADER = f"  {'':<30}{'median':>9}{'min':>9}{'max':>9}{'cpu':>9}{'in gc':>9}"


class Clock:
    """Times one step: ``with clock(timing): ...`` appends its wall, CPU and garbage-collection seconds."""

    def __init__(self) -> None:
        self.in_gc = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.in_gc += time.perf_counter() - self._gc_start

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def __call__(self, timing: Timing) -> Clock:
        self.timing = timing
        return self

    def __enter__(self) -> None:
        self.wall, self.cpu, self.gc = time.perf_counter(), time.process_time(), self.in_gc

    def __exit__(self, *exc: object) -> None:
        self.timing.wall.append(time.perf_counter() - self.wall)
        self.timing.cpu.append(time.process_time() - self.cpu)
        self.timing.gc.append(self.in_gc - self.gc)


def run_cli(args: list[str], cwd: Path, runs: int, no_gc: bool) -> tuple[Timing, list[str]]:
    """Wall time (and children's CPU time) of a gitmesh command in a new process, ``runs`` times."""
    script = Path(sys.executable).with_name("gitmesh")
    if no_gc:
        command = [sys.executable, "-c", "import gc; gc.disable(); from gitmesh.cli import main; main()"]
    elif script.exists():
        command = [str(script)]
    else:
        command = [sys.executable, "-m", "gitmesh"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    timing = Timing()
    for _ in range(runs):
        before = os.times()
        t0 = time.perf_counter()
        done = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True)
        timing.wall.append(time.perf_counter() - t0)
        after = os.times()
        timing.cpu.append(
            after.children_user + after.children_system - before.children_user - before.children_system
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command + args)} failed ({done.returncode}):\n{done.stderr}")
    return timing, command


def run_python(code: str, runs: int) -> Timing:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    timing = Timing()
    for _ in range(runs):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        timing.wall.append(time.perf_counter() - t0)
        after = os.times()
        timing.cpu.append(
            after.children_user + after.children_system - before.children_user - before.children_system
        )
    return timing


def profile(label: str, fn: Callable[[], Any], top: int, profiler: str) -> Any:
    """Run ``fn`` once under a profiler and print where the time goes."""
    if profiler == "pyinstrument":
        from pyinstrument import Profiler  # optional: pip install pyinstrument

        prof = Profiler()
        prof.start()
        result = fn()
        prof.stop()
        # "[self]" rows of the flat view lump together the own time of every file: leave them out.
        flat = [x for x in _without_banner(prof.output_text(flat=True)) if "[self]" not in x]
        tree = _without_banner(prof.output_text(processor_options={"filter_threshold": 0.02}))
        duration = prof.last_session.duration if prof.last_session else float("nan")
        print(f"\n--- profile: {label} ({duration:.3f} s under pyinstrument), top {top} by own time ---")
        print("\n".join(flat[:top]))
        print(f"\n--- profile: {label}, call tree (nodes >= 2%, library frames folded) ---")
        print("\n".join(tree))
        return result
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    result = prof.runcall(fn)
    elapsed = time.perf_counter() - t0
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        text = buf.getvalue()
        print(f"\n--- profile: {label} ({elapsed:.3f} s under cProfile), top {top} by {order} ---")
        print(text[text.index("   ncalls") :].rstrip() if "   ncalls" in text else text.rstrip())
    return result


def _without_banner(text: str) -> list[str]:
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("Profile at ")), 0)
    return [line for line in lines[start:] if line.strip()]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU(s), {model}, Python {platform.python_version()}, {platform.system()}"


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def default_profiler() -> str:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return "cprofile"
    return "pyinstrument"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=10_000, help="objects in the generated repo")
    parser.add_argument("--namespaces", type=int, default=100, help="namespaces they are spread over")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of the in-process stages")
    parser.add_argument("--cli-runs", type=int, default=3, help="timed runs of the gitmesh plan command")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="diagnostic: run every timed stage, and the CLI, with the garbage collector off",
    )
    parser.add_argument("--profile", action="store_true", help="also profile each stage once")
    parser.add_argument(
        "--profiler",
        choices=["pyinstrument", "cprofile"],
        default=default_profiler(),
        help="pyinstrument (sampling, if installed) or cProfile (default: %(default)s)",
    )
    parser.add_argument("--top", type=int, default=25, help="functions to show per profile")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print it")
    args = parser.parse_args()
    if args.repeat < 1 or args.cli_runs < 0:
        parser.error("--repeat must be at least 1 and --cli-runs at least 0")

    tmp = Path(tempfile.mkdtemp(prefix="gitmesh-bench-"))
    try:
        bench(args, tmp)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def bench(args: argparse.Namespace, tmp: Path) -> None:
    print(f"machine: {machine()}; {load()}")
    rng = random.Random(args.seed)
    repo_dir, store = tmp / "repo", tmp / "store.db"
    repo_dir.mkdir()

    t0 = time.perf_counter()
    mesh = build_mesh(args.manifests, args.namespaces, rng)
    files_a = render_files(mesh)
    git(repo_dir, "init", "-q", "-b", "main")
    write_tree(repo_dir, files_a)
    sha_a = commit(repo_dir, f"mesh: {mesh.count()} objects")
    expected = change_one_percent(mesh, rng)
    files_b = render_files(mesh)
    write_tree(repo_dir, files_b)
    sha_b = commit(repo_dir, "mesh: shift canaries, change routes, adjust access")
    n_files = sum(p.endswith(".yaml") for p in files_b)
    size = sum(len(t.encode()) for p, t in files_b.items() if p.endswith(".yaml"))
    changed = expected.create + expected.update + expected.delete
    print(
        f"repo: {args.manifests:,} manifests (A) in {n_files:,} files ({size / 1e6:.1f} MB) over "
        f"{args.namespaces} namespaces; B changes {changed} objects; generated and committed in "
        f"{time.perf_counter() - t0:.1f} s"
    )

    # Setup, not timed: revision A applied to a fresh store.
    t0 = time.perf_counter()
    rev_a = read_stage(repo_dir, sha_a)
    checked_a = pipeline.check(rev_a)
    check_ok(checked_a, "revision A")
    if len(checked_a.desired) != args.manifests:
        raise SystemExit(f"revision A has {len(checked_a.desired)} valid objects, expected {args.manifests}")
    backend = embedded(store)
    try:
        pipeline.apply(pipeline.plan(rev_a, checked_a, backend, SOURCE), backend)
        again = pipeline.plan(rev_a, checked_a, backend, SOURCE)
    finally:
        backend.close()
    if again.has_changes:
        raise SystemExit(f"after applying A, planning A again is not empty: {again.summary()}")
    del rev_a, checked_a, again
    print(f"setup: revision A applied to {store.name} in {time.perf_counter() - t0:.1f} s\n")

    read, check, plan, total = Timing(), Timing(), Timing(), Timing()
    clock = Clock()
    result: Plan | None = None
    for _ in range(args.repeat):
        result = None  # let the previous run's objects go before timing the next one
        gc.collect()
        if args.no_gc:
            gc.disable()
        try:
            with clock(read):
                revision = read_stage(repo_dir, sha_b)
            with clock(check):
                validated = pipeline.check(revision)
            check_ok(validated, "revision B")
            with clock(plan):
                result = plan_stage(store, revision, validated)
        finally:
            gc.enable()
        total.add(read, check, plan)
    clock.close()
    assert result is not None

    gc_note = "garbage collector OFF (diagnostic)" if args.no_gc else "garbage collector on"
    print(f"in-process, {args.repeat} run(s), warm (schemas compiled, store in the page cache), {gc_note}:")
    print(HEADER)
    for label, timing in (
        ("read revision B from Git", read),
        ("check (load + validate)", check),
        ("plan (diff vs store)", plan),
        ("total (read + check + plan)", total),
    ):
        print(timing.row(label))
    counts = result.counts
    found = Expected(counts[Action.CREATE], counts[Action.UPDATE], counts[Action.DELETE])
    print(
        f"  plan: {result.summary()} {len(result.impact.splits)} split shifts, "
        f"{len(result.impact.access)} access changes"
    )
    if found != expected:
        raise SystemExit(f"the plan found {found}, but revision B makes {expected}")
    print(
        f"  changes as expected: {expected.create} create, {expected.update} update, {expected.delete} delete"
    )

    cli: Timing | None = None
    if args.cli_runs:
        cli_args = ["plan", "--repo", str(repo_dir), "--ref", sha_b, "--store", str(store)]
        cli, command = run_cli(cli_args, tmp, args.cli_runs, args.no_gc)
        imports = run_python("import gitmesh.cli", args.cli_runs)
        bare = run_python("pass", args.cli_runs)
        shown = {"-m": "python -m gitmesh", "-c": "gitmesh, gc off,"}.get(
            command[1] if len(command) > 1 else "", "gitmesh"
        )
        print(f"\nend to end, a new process each, {args.cli_runs} run(s) (cpu: the child's user + system):")
        print(HEADER)
        print(cli.row(f"{shown} plan (CLI)"))
        print(imports.row("python -c 'import gitmesh.cli'"))
        print(bare.row("python -c pass"))

    med = statistics.median(total.wall)
    print(
        f"\ntarget < {TARGET_SECONDS:.0f} s: in-process total {med:.2f} s "
        f"{'meets' if med < TARGET_SECONDS else 'MISSES'} it",
        end="",
    )
    if cli is not None:
        cli_med = statistics.median(cli.wall)
        print(
            f"; the CLI takes {cli_med:.2f} s ({'meets' if cli_med < TARGET_SECONDS else 'MISSES'})", end=""
        )
    print(" [diagnostic: garbage collector off]" if args.no_gc else "")
    print(load())

    if args.profile:
        revision = profile(
            "read revision B from Git", lambda: read_stage(repo_dir, sha_b), args.top, args.profiler
        )
        validated = profile(
            "check (load + validate)", lambda: pipeline.check(revision), args.top, args.profiler
        )
        profile(
            "plan (diff vs store)", lambda: plan_stage(store, revision, validated), args.top, args.profiler
        )


if __name__ == "__main__":
    main()
