"""Read a revision of the mesh repo: a commit's files, from Git objects, never a work tree.

A work tree can move under us (another fetch, a checkout); a commit cannot.
Remote repositories are mirrored into a bare cache and read from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git

from gitmesh.errors import SourceError
from gitmesh.plan import layout
from gitmesh.plan.diagnostics import Diagnostic
from gitmesh.plan.ignore import IGNORE_FILE, IgnoreRules, parse_ignore
from gitmesh.plan.kustomize import Build, Tree
from gitmesh.plan.load import MAX_FILE_BYTES, SourceFile
from gitmesh.sync.build import build

_FETCH_TIMEOUT = 300  # seconds: a fetch that hangs longer is killed and reported


@dataclass(frozen=True)
class Revision:
    """The manifest files of one commit (or of a plain directory, when ``sha`` is None)."""

    sha: str | None
    ref: str
    path: str
    files: tuple[SourceFile, ...]
    committed_at: datetime | None = None
    author: str = ""
    message: str = ""
    builds: tuple[Build, ...] = ()  # the kustomizations, rendered
    diagnostics: tuple[Diagnostic, ...] = ()  # found while reading: .gitmeshignore, charts, kustomizations
    acknowledged: frozenset[tuple[str, str]] = frozenset()  # foreign (group, kind)s not to mention
    namespace: str = ""  # for objects that name none
    # The other files that diagnostics of reading point at (.gitmeshignore, kustomizations), to quote.
    quoted: tuple[SourceFile, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:12] if self.sha else "working directory"

    @property
    def texts(self) -> dict[str, bytes]:
        """Every file's bytes by path, to quote the lines diagnostics point at."""
        builds = (i for b in self.builds for i in b.inputs)
        return {f.path: f.data for f in (*self.quoted, *self.files, *builds)}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gitmesh" / "repos"


def open_repo(url: str, *, fetch: bool = True) -> git.Repo:
    """A local repository as it is, or a bare mirror of a remote one, fetched now."""
    if os.path.isdir(url):
        try:
            return git.Repo(url)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
            raise SourceError(f"cannot read repository {url}: {_git_reason(e)}") from e
    return mirror(url, fetch=fetch)


_mirror_locks: dict[Path, threading.Lock] = {}
_mirror_locks_guard = threading.Lock()


def mirror(url: str, *, fetch: bool = True, env: Mapping[str, str] | None = None) -> git.Repo:
    """A bare mirror of ``url`` in the cache, cloned or fetched now. Every ref is copied as the remote
    has it (forced, pruned), so a force-push simply moves the mirror's branch too. ``env`` adds
    settings for git (credentials, SSH command) that must not be written into the mirror's config."""
    path = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
    with _mirror_locks_guard:
        lock = _mirror_locks.setdefault(path, threading.Lock())
    git_env = {"GIT_TERMINAL_PROMPT": "0", **(env or {})}  # never wait for a password on a terminal
    with lock:
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                # Cloned beside and renamed into place: a failed clone leaves no half mirror behind.
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    git.Repo.clone_from(url, Path(tmp) / "repo", mirror=True, env=git_env)
                    os.rename(Path(tmp) / "repo", path)
                return git.Repo(path)
            repo = git.Repo(path)
            if fetch:
                repo.git.fetch("--prune", "origin", env=git_env, kill_after_timeout=_FETCH_TIMEOUT)
            return repo
        except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
            raise SourceError(f"cannot read repository {url}: {_git_reason(e)}") from e


def read_revision(repo: git.Repo, ref: str, path: str = "", namespace: str = "") -> Revision:
    """The manifest files under ``path`` at ``ref`` (a branch, tag or commit), kustomizations rendered."""
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError) as e:
        raise SourceError(f"no commit {ref!r} in {repo.git_dir}") from e
    path = path.strip("/")
    try:
        tree = commit.tree / path if path else commit.tree
    except KeyError as e:
        raise SourceError(f"path {path!r} does not exist at {commit.hexsha[:12]}") from e
    if not isinstance(tree, git.Tree):
        raise SourceError(f"path {path!r} at {commit.hexsha[:12]} is a file, not a directory")

    blobs = {str(item.path): item for item in tree.traverse() if isinstance(item, git.Blob)}
    readable = _GitTree(commit.tree, blobs)  # the whole commit: kustomizations may name files beside path
    ignore = _ignore_rules(readable, posixpath.join(path, IGNORE_FILE) if path else IGNORE_FILE)
    paths = [p for p in blobs if not ignore.ignores(p[len(path) + 1 :] if path else p)]
    return dataclasses.replace(
        _arranged(readable, paths, ignore, namespace),
        sha=commit.hexsha,
        ref=ref,
        path=path,
        committed_at=datetime.fromtimestamp(commit.committed_date, UTC),
        author=str(commit.author.name),
        message=str(commit.message).strip(),
    )


def read_directory(root: str, namespace: str = "") -> Revision:
    """The manifest files of a plain directory: for checking work before it is committed."""
    base = Path(root)
    if not base.is_dir():
        raise SourceError(f"{root} is not a directory")
    readable = _DirTree(os.path.normpath(root))
    ignore = _ignore_rules(readable, os.path.normpath(base / IGNORE_FILE))
    paths = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            if not ignore.ignores(full.relative_to(base).as_posix()):
                paths.append(os.path.normpath(full))
    return dataclasses.replace(_arranged(readable, paths, ignore, namespace), ref=str(base))


def _arranged(tree: Tree, paths: list[str], ignore: IgnoreRules, namespace: str) -> Revision:
    """The revision's plain files read, its kustomizations rendered, its charts noted."""
    arranged = layout.arrange(sorted(paths), tree)
    builds = tuple(build(b, tree) for b in arranged.builds)
    diagnostics = (*ignore.diagnostics, *arranged.diagnostics, *(d for b in builds for d in b.problems))
    return Revision(
        sha=None,
        ref="",
        path="",
        files=tuple(tree.read(p) for p in arranged.plain),
        builds=builds,
        diagnostics=(*ignore.diagnostics, *arranged.diagnostics),
        acknowledged=ignore.acknowledged,
        namespace=namespace,
        quoted=tuple(tree.read(p) for p in sorted({d.location.file for d in diagnostics}) if tree.is_file(p)),
    )


def _ignore_rules(tree: Tree, path: str) -> IgnoreRules:
    if not tree.is_file(path):
        return IgnoreRules()
    f = tree.read(path)
    return parse_ignore(f.path, f.size, f.data)


class _GitTree:
    """A commit's tree, by repository path."""

    root = ""

    def __init__(self, tree: git.Tree, blobs: dict[str, git.Blob]) -> None:
        self.tree = tree
        self.blobs = blobs  # those already found: looking a path up walks the tree from its root

    def _entry(self, path: str) -> object:
        if path in self.blobs:
            return self.blobs[path]
        if path in ("", "."):
            return self.tree
        try:
            return self.tree / path
        except KeyError:
            return None

    def is_file(self, path: str) -> bool:
        return isinstance(self._entry(path), git.Blob)

    def is_dir(self, path: str) -> bool:
        return isinstance(self._entry(path), git.Tree)

    def read(self, path: str) -> SourceFile:
        blob = self.blobs.get(path) or self.tree / path
        size = blob.size  # asked first: an oversized blob is never read
        return SourceFile(path, size, blob.data_stream.read() if size <= MAX_FILE_BYTES else b"")


class _DirTree:
    """A directory's files, by their path as the user named the directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def read(self, path: str) -> SourceFile:
        size = os.stat(path).st_size
        return SourceFile(path, size, Path(path).read_bytes() if size <= MAX_FILE_BYTES else b"")


def _git_reason(e: Exception) -> str:
    if isinstance(e, git.GitCommandError):
        text = (e.stderr or str(e)).strip().removeprefix("stderr:").strip(" '")
        # "Cloning into <a temporary directory>" says nothing about what went wrong.
        return "\n".join(line for line in text.splitlines() if not line.startswith("Cloning into"))
    return str(e)
