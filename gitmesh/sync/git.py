"""Read a revision of the mesh repo: a commit's files, from Git objects, never a work tree.

A work tree can move under us (another fetch, a checkout); a commit cannot.
Remote repositories are mirrored into a bare cache and read from there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git
import pathspec

from gitmesh.errors import SourceError
from gitmesh.plan.load import MAX_FILE_BYTES, SourceFile, is_manifest_path

IGNORE_FILE = ".gitmeshignore"


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
    try:
        if os.path.isdir(url):
            return git.Repo(url)
        mirror = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            return git.Repo.clone_from(url, mirror, mirror=True)
        repo = git.Repo(mirror)
        if fetch:
            repo.remotes.origin.fetch(prune=True)
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
        rel = item.path[len(path) + 1 :] if path else item.path
        if not is_manifest_path(rel) or ignore.match_file(rel):
            continue
        size = item.size  # asked first: an oversized blob is never read
        data = item.data_stream.read() if size <= MAX_FILE_BYTES else b""
        files.append(SourceFile(item.path, size, data))
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
        return (e.stderr or str(e)).strip().removeprefix("stderr:").strip(" '")
    return str(e)
