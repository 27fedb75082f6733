"""Read a revision of the mesh repo: a commit's files, from Git objects, never a work tree.

A work tree can move under us (another fetch, a checkout); a commit cannot.
Remote repositories are mirrored into a bare cache and read from there.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git
import pathspec

from gitmesh.errors import SourceError
from gitmesh.plan.load import MAX_FILE_BYTES, SourceFile, is_manifest_path

IGNORE_FILE = ".gitmeshignore"
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

    @property
    def short(self) -> str:
        return self.sha[:12] if self.sha else "working directory"


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


def read_revision(repo: git.Repo, ref: str, path: str = "") -> Revision:
    """The manifest files under ``path`` at ``ref`` (a branch, tag or commit)."""
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

    ignore = _ignore_spec(tree)
    files = []
    for item in tree.traverse():
        if not isinstance(item, git.Blob):
            continue
        blob_path = os.fspath(item.path)
        rel = blob_path[len(path) + 1 :] if path else blob_path
        if not is_manifest_path(rel) or ignore.match_file(rel):
            continue
        size = item.size  # asked first: an oversized blob is never read
        data = item.data_stream.read() if size <= MAX_FILE_BYTES else b""
        files.append(SourceFile(blob_path, size, data))
    return Revision(
        sha=commit.hexsha,
        ref=ref,
        path=path,
        files=tuple(sorted(files, key=lambda f: f.path)),
        committed_at=datetime.fromtimestamp(commit.committed_date, UTC),
        author=str(commit.author.name),
        message=str(commit.message).strip(),
    )


def read_directory(root: str) -> Revision:
    """The manifest files of a plain directory: for checking work before it is committed."""
    base = Path(root)
    if not base.is_dir():
        raise SourceError(f"{root} is not a directory")
    ignore_file = base / IGNORE_FILE
    ignore = pathspec.GitIgnoreSpec.from_lines(
        ignore_file.read_text().splitlines() if ignore_file.exists() else []
    )
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(base).as_posix()
            if not is_manifest_path(rel) or ignore.match_file(rel):
                continue
            size = full.stat().st_size
            data = full.read_bytes() if size <= MAX_FILE_BYTES else b""
            files.append(SourceFile(os.path.normpath(full), size, data))
    return Revision(sha=None, ref=str(base), path="", files=tuple(sorted(files, key=lambda f: f.path)))


def _ignore_spec(tree: git.Tree) -> pathspec.GitIgnoreSpec:
    try:
        blob = tree / IGNORE_FILE
    except KeyError:
        return pathspec.GitIgnoreSpec.from_lines([])
    return pathspec.GitIgnoreSpec.from_lines(blob.data_stream.read().decode("utf-8", "replace").splitlines())


def _git_reason(e: Exception) -> str:
    if isinstance(e, git.GitCommandError):
        text = (e.stderr or str(e)).strip().removeprefix("stderr:").strip(" '")
        # "Cloning into <a temporary directory>" says nothing about what went wrong.
        return "\n".join(line for line in text.splitlines() if not line.startswith("Cloning into"))
    return str(e)
