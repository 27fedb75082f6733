"""Run ``kubectl kustomize`` on a private copy of the files one build reads.

The files come from the revision (a commit's tree, or a directory), are written
into a fresh temporary directory at their repository paths, and the build runs
there with bounded time, no kubeconfig and no home directory of the user's: it
cannot see the work tree, the network is never needed (remote bases were refused
before), and nothing it leaves behind survives it.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gitmesh.objects import Location
from gitmesh.revision.diagnostics import Diagnostic
from gitmesh.revision.kustomize import MAX_OUTPUT_BYTES, Build, BuildPlan, Tree, mark
from gitmesh.revision.load import RevisionFile

KUBECTL = "kubectl"
TIMEOUT = 30.0  # seconds a build may take
_KLOG_ERROR = re.compile(r'"command failed" err="(.*)"\s*$', re.DOTALL)


def build(plan: BuildPlan, tree: Tree) -> Build:
    """Render ``plan``: its output, or the diagnostic that says why there is none."""
    inputs = []
    problems: list[Diagnostic] = []
    with tempfile.TemporaryDirectory(prefix="gitmesh-kustomize-") as tmp:
        base = Path(tmp) / "tree"
        for path in plan.files:
            copy = _in_copy(path, tree.root)
            if copy is None:  # a crafted tree (an entry named '..') must not write outside the copy
                problems.append(Diagnostic(Location(path), "GM052", "the path leaves the repository"))
                continue
            f = tree.read(path)
            if path in plan.resources:
                inputs.append(f)
                data, found = mark(f)
                problems += found
            elif f.size != len(f.data):
                problems.append(
                    Diagnostic(Location(path), "GM003", f"file is {f.size:,} bytes: too large to read")
                )
                continue
            else:
                data = f.data
            target = base / copy
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        directory = _in_copy(posixpath.dirname(plan.root) or ".", tree.root)
        if directory is None:
            problems.append(_problem(plan, "the path leaves the repository"))
        if problems or directory is None:  # the files' own diagnostics say what to fix; nothing runs
            return Build(plan.root, tuple(inputs), problems=tuple(problems))
        return _run(plan, base / directory, tuple(inputs), Path(tmp))


def _in_copy(path: str, root: str) -> str | None:
    """Where ``path`` (a path of the tree) goes in the copy: relative to the tree's root; None if outside."""
    relative = posixpath.normpath(posixpath.relpath(path, root) if root else path)
    if relative == ".." or relative.startswith(("../", "/")):
        return None
    return relative


def _run(plan: BuildPlan, directory: Path, inputs: tuple[RevisionFile, ...], home: Path) -> Build:
    kubectl = shutil.which(KUBECTL)
    base = home / "tree"
    if kubectl is None:
        return Build(
            plan.root,
            inputs,
            problems=(_problem(plan, "kubectl is not installed: it renders kustomizations"),),
        )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": os.devnull}
    try:
        done = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            env=env,
            cwd=home,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Build(
            plan.root, inputs, problems=(_problem(plan, f"kubectl kustomize took longer than {TIMEOUT:g} s"),)
        )
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").replace(f"{base}/", "").strip()
        if quoted := _KLOG_ERROR.search(said):  # kubectl's log line around kustomize's own words
            said = quoted[1].replace('\\"', '"')
        return Build(
            plan.root, inputs, problems=(_problem(plan, f"kubectl kustomize failed: {said[:2000]}"),)
        )
    if len(done.stdout) > MAX_OUTPUT_BYTES:
        message = f"kubectl kustomize printed {len(done.stdout):,} bytes; the limit is {MAX_OUTPUT_BYTES:,}"
        return Build(plan.root, inputs, problems=(_problem(plan, message),))
    return Build(plan.root, inputs, done.stdout)


def _problem(plan: BuildPlan, message: str) -> Diagnostic:
    return Diagnostic(Location(plan.root), "GM052", message)
