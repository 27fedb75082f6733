"""After a failed rollout, a revert for a person to review: a commit on top of the failed revision
that puts the split back on its stable weights, pushed to ``gitmesh/rollback/<sha>``.

Git is never rewritten and nothing is merged: the branch is only there so someone can open the pull
request. Only the weight values change in the file; everything else (comments, layout) is kept.
"""

from __future__ import annotations

import io
import re

import git
from gitdb.base import IStream

from gitmesh.apis import gateway
from gitmesh.errors import RolloutError, SourceError
from gitmesh.objects import Path
from gitmesh.revision.load import load_files
from gitmesh.rollout.model import Rollout
from gitmesh.sync.git import open_repo, push, read_revision, split_credentials

BRANCH_PREFIX = "gitmesh/rollback/"
# The value after a `weight:` key (YAML or JSON): a number, a quantity or a quoted string.
_WEIGHT = re.compile(r"""("?weight"?\s*:\s*)(-?[0-9.]+[a-zA-Z]*|"[^"\n]*"|'[^'\n]*')""")


def branch_name(r: Rollout) -> str:
    return BRANCH_PREFIX + r.revision[:12]


def revert_text(text: str, positions: dict[int, tuple[int, int]], weights: dict[int, int]) -> str:
    """``text`` with the weight at each backend's key position (line, column; 1-based) replaced."""
    lines = text.split("\n")
    for index, (line, column) in positions.items():
        row = lines[line - 1]
        match = _WEIGHT.match(row, column - 1)
        if match is None:
            raise RolloutError(f"no weight value at line {line}, column {column}")
        lines[line - 1] = row[: match.start(2)] + str(weights[index]) + row[match.end(2) :]
    return "\n".join(lines)


def push_revert(url: str, r: Rollout) -> str:
    """Commit the split's stable weights onto ``r.revision`` and push it as a branch; the branch name."""
    repo = open_repo(url)
    files = read_revision(repo, r.revision).files
    namespace, _, name = r.split.partition("/")
    manifests = [
        m
        for m in load_files(files).manifests
        if m.obj.get("kind") in ("TrafficSplit", "HTTPRoute", "GRPCRoute")
        and (m.obj.get("metadata") or {}).get("name") == name
        and (m.obj.get("metadata") or {}).get("namespace") == namespace
    ]
    if len(manifests) != 1:
        raise RolloutError(f"no TrafficSplit or route {r.split} in revision {r.revision[:12]}")
    m = manifests[0]
    if m.obj["kind"] != "TrafficSplit":
        at: Path = ("spec", "rules", gateway.split_rule(m.obj) or 0, "backendRefs")
        names = [str(b["name"]) for b in m.obj["spec"]["rules"][at[2]].get("backendRefs") or ()]
    else:
        at, names = ("spec", "backends"), [str(b["service"]) for b in m.obj["spec"]["backends"]]
    written = {i: m.positions.get((*at, i, "weight")) for i in range(len(names))}
    if None in written.values():  # a route's weight may be left out (1): there is no value to change
        raise RolloutError(f"{r.split} leaves a weight out in revision {r.revision[:12]}; no revert written")
    positions = {i: p for i, p in written.items() if p is not None}
    weights = {i: r.stable.get(n, 0) for i, n in enumerate(names)}
    (source,) = [f for f in files if f.path == m.location.file]
    data = revert_text(source.data.decode(), positions, weights).encode()

    base = repo.commit(r.revision)
    blob = repo.odb.store(IStream(git.Blob.type, len(data), io.BytesIO(data)))
    index = git.IndexFile.from_tree(repo, base)
    mode = (base.tree / source.path).mode
    index.add([git.BaseIndexEntry((mode, blob.binsha, 0, source.path))], write=False)
    message = (
        f"Roll back {r.split} to its stable weights\n\n"
        f"gitmesh rolled back the rollout of {r.revision[:12]}: {r.reason}\n"
    )
    commit = git.Commit.create_from_tree(repo, index.write_tree(), message, parent_commits=[base], head=False)
    branch = branch_name(r)
    if repo.bare and repo.remotes:  # a mirror of a remote: the branch goes to the remote
        try:
            # To the URL, not to the mirror's remote: a mirror remote pushes all refs or none.
            push(repo, url, f"{commit.hexsha}:refs/heads/{branch}")
        except SourceError as e:
            raise RolloutError(f"cannot push {branch} to {split_credentials(url)[0]}: {e}") from e
    else:
        repo.create_head(branch, commit, force=True)
    return branch
