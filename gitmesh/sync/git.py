"""Read a revision of the mesh repo: a commit's files, from Git objects, never a work tree.

A work tree can move under us (another fetch, a checkout); a commit cannot.
Remote repositories are mirrored into a bare cache and read from there. Talking to a remote is
bounded: git runs with low-speed limits and SSH timeouts, under an overall deadline, and is killed
(with its ssh or curl helpers) when the caller stops. Credentials never reach a URL git stores or
prints: they are passed as a header in git's environment, and every message is redacted.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

import git
from git.objects.fun import tree_entries_from_data

from gitmesh.errors import SourceError
from gitmesh.revision import layout
from gitmesh.revision.diagnostics import Diagnostic
from gitmesh.revision.ignore import IGNORE_FILE, IgnoreRules, parse_ignore
from gitmesh.revision.kustomize import Build, Tree
from gitmesh.revision.load import MAX_FILE_BYTES, RevisionFile, is_manifest_path
from gitmesh.sync.build import build

MAX_ENTRIES = 100_000  # files and directories under a source's path
MAX_REVISION_BYTES = 64 << 20  # of manifests under a source's path, together
FETCH_DEADLINE = 300  # seconds for one clone, fetch or push, however the remote behaves
LOW_SPEED_LIMIT, LOW_SPEED_TIME = 1000, 20  # an HTTP transfer slower than this (bytes/s, for s) fails
SSH_TIMEOUT = 15  # seconds to connect and exchange banners; an answerless server is dropped after 2x
# Settings for every git command that talks to a remote: a remote that stops answering fails the
# command instead of holding it.
_BOUNDS = (("http.lowSpeedLimit", str(LOW_SPEED_LIMIT)), ("http.lowSpeedTime", str(LOW_SPEED_TIME)))
_SSH_BOUNDS = (
    "-o", f"ConnectTimeout={SSH_TIMEOUT}",
    "-o", f"ServerAliveInterval={SSH_TIMEOUT}",
    "-o", "ServerAliveCountMax=2",
    "-o", "BatchMode=yes",
)  # fmt: skip
# git's words when one of those bounds ended a command (curl's low-speed abort, ssh's timeouts).
_TIMED_OUT = re.compile(r"Operation too slow|timed out|not responding")
_ERROR_TAIL = 8192  # bytes of git's stderr kept for the message: a remote may send without end


class SourceUnavailable(SourceError):
    """The remote did not answer in time."""


@dataclass(frozen=True)
class Revision:
    """The manifest files of one commit (or of a plain directory, when ``sha`` is None)."""

    sha: str | None
    ref: str
    path: str
    files: tuple[RevisionFile, ...]
    author: str = ""
    message: str = ""
    builds: tuple[Build, ...] = ()  # the kustomizations, rendered
    diagnostics: tuple[Diagnostic, ...] = ()  # found while reading: .gitmeshignore, charts, kustomizations
    acknowledged: frozenset[tuple[str, str]] = frozenset()  # foreign (group, kind)s not to mention
    namespace: str = ""  # for objects that name none
    # The other files that diagnostics of reading point at (.gitmeshignore, kustomizations), to quote.
    quoted: tuple[RevisionFile, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:12] if self.sha else "working directory"

    @property
    def digest(self) -> str:
        """Names a plain directory's content as a commit's sha names a commit's: ``sha256:<hex>``."""
        h = hashlib.sha256()
        for path, data in sorted(self.texts.items()):
            h.update(f"{len(path)}:{path}{len(data)}:".encode() + data)
        return f"sha256:{h.hexdigest()}"

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
            raise SourceError(f"cannot read repository {url}: {e}") from e
    return mirror(url, fetch=fetch)


_mirror_locks: dict[Path, threading.Lock] = {}
_mirror_locks_guard = threading.Lock()


def mirror(
    url: str,
    *,
    fetch: bool = True,
    settings: Sequence[tuple[str, str]] = (),
    ssh_options: Sequence[str] = (),
    stop: threading.Event | None = None,
) -> git.Repo:
    """A bare mirror of ``url`` in the cache, cloned or fetched now. Every ref is copied as the remote
    has it (forced, pruned), so a force-push simply moves the mirror's branch too. ``settings`` (git
    configuration) and ``ssh_options`` apply to this fetch only and are never written into the
    mirror. Credentials in ``url`` are taken out of it: only the bare URL is stored or shown."""
    bare, credentials = split_credentials(url)
    path = _mirror_path(bare)
    if credentials and _mirror_path(url).exists():  # cloned by an older gitmesh, with them in its config
        shutil.rmtree(_mirror_path(url))
    with _mirror_locks_guard:
        lock = _mirror_locks.setdefault(path, threading.Lock())
    env = _remote_env([*credentials, *settings], ssh_options)
    # The mirrors are this user's alone, whatever the umask (or an older gitmesh) made of them.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with lock:
        try:
            if not path.exists():
                # Cloned beside and renamed into place: a failed clone leaves no half mirror behind.
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    _run_git(["clone", "--mirror", "--quiet", "--", bare, f"{tmp}/repo"], env, stop)
                    os.rename(Path(tmp) / "repo", path)
            elif fetch:
                _run_git(["-C", str(path), "fetch", "--prune", "--quiet", "origin"], env, stop)
            path.chmod(0o700)
            return git.Repo(path)
        except SourceError as e:  # SourceUnavailable stays itself
            raise type(e)(f"cannot read repository {bare}: {e}") from e
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
            raise SourceError(f"cannot read repository {bare}: {e}") from e


def _mirror_path(url: str) -> Path:
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]


def push(repo: git.Repo, url: str, refspec: str) -> None:
    """Push ``refspec`` of ``repo`` to ``url`` (forced), with the bounds and credentials of a fetch."""
    bare, credentials = split_credentials(url)
    _run_git(
        ["-C", str(repo.git_dir), "push", "--force", "--quiet", bare, refspec],
        _remote_env(credentials, ()),
        None,
    )


def split_credentials(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``url`` without the credentials it may carry, and the git settings that pass them instead:
    an ``Authorization`` header for HTTP(S). Over SSH only the user name counts (ssh never takes a
    password from a URL), so only the password is dropped."""
    parts = urlsplit(url)
    if "://" not in url or (parts.username is None and parts.password is None):
        return url, []
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https"):
        return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host)), []
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    header = "Authorization: Basic " + base64.b64encode(pair.encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), [("http.extraHeader", header)]


_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^/\s?#]+)@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***`` (an SSH user name stays)."""

    def hide(m: re.Match[str]) -> str:
        scheme, (user, colon, _) = m.group(1), m.group(2).partition(":")
        if scheme.lower() in ("http", "https"):
            return f"{scheme}://***@"
        return f"{scheme}://{user}{':***' if colon else ''}@"

    return _URL_USERINFO.sub(hide, text)


def _remote_env(settings: Sequence[tuple[str, str]], ssh_options: Sequence[str]) -> dict[str, str]:
    """git's environment for talking to a remote. Settings go through GIT_CONFIG_* variables: never
    a command line (which other users can read), a URL or the mirror's config."""
    pairs = [*_BOUNDS, *settings]
    env = {
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal
        "GIT_SSH_COMMAND": shlex.join(["ssh", *_SSH_BOUNDS, *ssh_options]),
        "GIT_CONFIG_COUNT": str(len(pairs)),
    }
    for i, (key, value) in enumerate(pairs):
        env |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
    return env


def _run_git(args: Sequence[str], env: Mapping[str, str], stop: threading.Event | None) -> None:
    """Run git to its end, the deadline, or ``stop``: whichever comes first. In a session of its own,
    so that killing it also kills the ssh or curl helper it started."""
    process = subprocess.Popen(
        ["git", *args],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    errors = _Tail(process.stderr)
    deadline = time.monotonic() + FETCH_DEADLINE
    try:
        while True:
            try:
                process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    raise SourceError("abandoned: asked to stop") from None
                if time.monotonic() > deadline:
                    raise SourceUnavailable(f"no complete answer within {FETCH_DEADLINE}s") from None
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        said = errors.close()
    if process.returncode != 0:
        reason = redact(said).strip() or f"git exited with {process.returncode}"
        raise (SourceUnavailable if _TIMED_OUT.search(reason) else SourceError)(reason)


class _Tail:
    """The last bytes of a stream, read in a thread of its own so that the stream never fills up."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._stream.read(4096):
            self._data = (self._data + chunk)[-_ERROR_TAIL:]

    def close(self) -> str:
        """What was read by the end of the stream. Waited for briefly: a helper killed with git may
        hold it open a moment (and if one escaped, the stream is left to it)."""
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._stream.close()
        return self._data.decode("utf-8", "replace")


def read_revision(repo: git.Repo, ref: str, path: str = "", namespace: str = "") -> Revision:
    """The manifest files under ``path`` at ``ref`` (a branch, tag or commit), kustomizations rendered."""
    try:
        return _read_revision(repo, ref, path, namespace)
    except (ValueError, git.GitError) as e:  # an object the commit names is missing or unreadable
        raise SourceError(f"{ref} cannot be read from {repo.git_dir}: {e}") from e


def _read_revision(repo: git.Repo, ref: str, path: str, namespace: str) -> Revision:
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError) as e:
        raise SourceError(f"no commit {ref!r} in {repo.git_dir}") from e
    path = path.strip("/")
    _check_trees(repo, commit, path)
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

    def read(self, path: str) -> RevisionFile:
        blob = self.blobs.get(path) or self.tree / path
        size = blob.size  # asked first: an oversized blob is never read
        return RevisionFile(path, size, blob.data_stream.read() if size <= MAX_FILE_BYTES else b"")


class _DirTree:
    """A directory's files, by their path as the user named the directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def read(self, path: str) -> RevisionFile:
        size = os.stat(path).st_size
        return RevisionFile(path, size, Path(path).read_bytes() if size <= MAX_FILE_BYTES else b"")


def _check_trees(repo: git.Repo, commit: git.Commit, path: str) -> None:
    """Refuse a commit, before any file is read, if a tree read from it (those on the way to ``path``
    and all under it) holds an entry that no checkout could write where it says (``.``, ``..``,
    ``.git`` or an alias of it, an empty name, one with a ``/``: git never writes such trees, only a
    crafted commit has one), or if there is more under ``path`` than gitmesh reads (MAX_ENTRIES tree
    entries, MAX_REVISION_BYTES of manifests: one blob named many times is cheap to push, dear to
    read). GitPython's own checks decide, entry by entry, so that the message names the entry."""

    def refused(why: str) -> SourceError:
        return SourceError(f"commit {commit.hexsha[:12]} is refused: {why}")

    wanted = path.split("/") if path else []
    pending = [("", commit.tree.binsha)]
    entries = 0
    manifests: Counter[str] = Counter()  # blob -> how many entries name it
    while pending:
        where, sha = pending.pop()
        depth = where.count("/") + 1 if where else 0
        for raw in _raw_entries(repo.odb.stream(sha).read()):
            name = raw.partition(b" ")[2].partition(b"\0")[0].decode("utf-8", "replace")
            full = f"{where}/{name}" if where else name
            try:
                ((entry, mode, _),) = tree_entries_from_data(raw)
            except ValueError:
                raise refused(
                    f"it holds a tree entry {full!r}, which git never writes "
                    "('.', '..', '.git' or an alias of it, an empty name, one with a '/')"
                ) from None
            inside = depth >= len(wanted)
            if stat.S_ISDIR(mode) and (inside or name == wanted[depth]):
                pending.append((full, entry))
            if not inside:
                continue
            entries += 1
            if entries > MAX_ENTRIES:
                raise refused(f"{path or '.'} holds more than {MAX_ENTRIES:,} files and directories")
            if (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) and is_manifest_path(name):
                manifests[entry.hex()] += 1
    sizes = _sizes(repo, list(manifests))
    if sum(sizes[blob] * count for blob, count in manifests.items()) > MAX_REVISION_BYTES:
        raise refused(f"{path or '.'} holds more than {MAX_REVISION_BYTES:,} bytes of manifests")


def _sizes(repo: git.Repo, blobs: list[str]) -> dict[str, int]:
    """The size of each blob, asked of git in one go (one question per blob costs a round trip each)."""
    listed = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objectname) %(objectsize)"],
        cwd=repo.git_dir,
        input="\n".join(blobs).encode(),
        capture_output=True,
    )
    if listed.returncode != 0:
        raise SourceError(f"cannot list the files' sizes: {listed.stderr.decode(errors='replace').strip()}")
    sizes = {}
    for line in listed.stdout.decode().splitlines():
        blob, _, size = line.partition(" ")
        if not size.isdigit():  # "<id> missing"
            raise SourceError(f"object {blob} is missing from the repository")
        sizes[blob] = int(size)
    return sizes


def _raw_entries(data: bytes) -> Iterator[bytes]:
    """Each entry of a raw tree object (``<mode> <name>NUL<20-byte id>``) as it is; a malformed rest
    as one more."""
    at = 0
    while at < len(data):
        end = data.find(b"\0", at) + 21  # a name ends at the first NUL
        if end < 21 or end > len(data):
            end = len(data)
        yield data[at:end]
        at = end
