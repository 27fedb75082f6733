"""Attacks on the Git side of a running `gitmesh run`, over real remotes (git http-backend, sshd):
credentials in URLs, remotes that never answer, crafted commits (unsafe tree entries, missing
objects, more than gitmesh reads), a password file that is a pipe. Each is bounded in time."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.errors import SourceError
from gitmesh.revision.load import MAX_FILE_BYTES
from gitmesh.sync.git import (
    LOW_SPEED_TIME,
    MAX_ENTRIES,
    MAX_REVISION_BYTES,
    SSH_TIMEOUT,
    SourceUnavailable,
    mirror,
)
from tests import factory as f
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.controller import RunningController, condition
from tests.gitserver import GitHttpServer
from tests.sshserver import SshServer

pytestmark = pytest.mark.integration

SIGTERM_BOUND = 10  # seconds from SIGTERM to exit, whatever git is doing


@pytest.fixture
def mesh(git_repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, GitHttpServer]]:
    """The example mesh, pushed to a bare repository served over HTTP by git http-backend, which asks
    for ``deploy`` and a password."""
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(git_repo.path), str(tmp_path / "served/mesh.git")], check=True
    )
    git_repo.git("remote", "add", "origin", str(tmp_path / "served/mesh.git"))
    server = GitHttpServer(tmp_path / "served", ("deploy", PASSWORD)).start()
    yield git_repo, server
    server.stop()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[list[RunningController]]:
    started: list[RunningController] = []
    yield started
    for c in started:
        if c.process is not None and c.process.poll() is None:
            c.kill()


def start(started: list[RunningController], workdir: Path, config: str) -> RunningController:
    (workdir / "gitmesh.yaml").write_text(config)
    c = RunningController(workdir, ["--config", workdir / "gitmesh.yaml", "--store", workdir / "store.db"])
    started.append(c.start())
    return c


def head(repo: GitRepo) -> str:
    return repo.git("rev-parse", "HEAD").strip()


def ready(c: RunningController, source: str) -> tuple[str, str, str]:
    """The Ready condition of ``source``: status, reason, message (empty before a first attempt)."""
    record = (c.status() or {}).get(source) or {"conditions": []}
    found = [x for x in record["conditions"] if x["type"] == "Ready"]
    return (found[0]["status"], found[0]["reason"], found[0]["message"]) if found else ("", "", "")


PASSWORD = "pw-7Hq2vX9zL4"
WRONG = "wrong-K3m8Rt1Q"


def test_credentials_in_a_url_are_never_stored_or_printed(
    mesh: tuple[GitRepo, GitHttpServer], tmp_path: Path, controller: list[RunningController]
) -> None:
    repo, server = mesh
    url = server.url("mesh.git")
    right, wrong = (url.replace("://", f"://deploy:{password}@") for password in (PASSWORD, WRONG))
    config = (
        f"sources:\n  - name: mesh\n    url: {right}\n    path: mesh\n    interval: 1s\n"
        f"  - name: wrong\n    url: {wrong}\n    path: mesh\n"
    )
    # A mirror an older gitmesh made: keyed by the whole URL, the password in its config, world-readable.
    mirrors = tmp_path / "cache/gitmesh/repos"
    old = mirrors / hashlib.sha256(right.encode()).hexdigest()[:16]
    old.mkdir(parents=True, mode=0o755)
    (old / "config").write_text(f'[remote "origin"]\n\turl = {right}\n')
    c = start(controller, tmp_path, config)
    c.wait_applied(head(repo), "mesh")  # the password reached the server
    c.wait(lambda s: ready(c, "wrong")[:2] == ("False", "FetchFailed"), "the wrong password refused")
    server.stop()  # every fetch of mesh fails from now on, with its message
    c.wait(lambda s: ready(c, "mesh")[:2] == ("False", "FetchFailed"), "mesh's fetch failing")

    assert url in ready(c, "mesh")[2] and url in ready(c, "wrong")[2]  # the remote is named, bare
    assert shown_anywhere(c, tmp_path, [PASSWORD, WRONG, *basic("deploy", PASSWORD, WRONG)]) == []
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [mirrors, *mirrors.iterdir()]}
    assert set(modes.values()) == {0o700}, modes


def test_a_password_in_an_ssh_url_is_dropped(
    git_repo: GitRepo, tmp_path: Path, controller: list[RunningController]
) -> None:
    """ssh never takes a password from a URL: it is only dropped, and the deploy key does the work."""
    server = SshServer(tmp_path / "ssh").start()
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    good = git_repo.commit("bookstore")
    bare = tmp_path / "served/mesh.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(git_repo.path), str(bare)], check=True)
    url = server.url(bare)
    try:
        keys = f"{{key_file: {server.deploy_key}, known_hosts_file: {server.known_hosts}}}"
        c = start(
            controller,
            tmp_path,
            f"sources:\n  - name: mesh\n    url: {url.replace('@', f':{PASSWORD}@', 1)}\n    path: mesh\n"
            f"    interval: 1s\n    ssh: {keys}\n",
        )
        c.wait_applied(good, "mesh")
        server.stop()
        c.wait(lambda s: ready(c, "mesh")[:2] == ("False", "FetchFailed"), "mesh's fetch failing")
        assert url in ready(c, "mesh")[2]
        assert shown_anywhere(c, tmp_path, [PASSWORD]) == []
    finally:
        server.stop()


def basic(user: str, *passwords: str) -> list[str]:
    """The Authorization header's value for each password, which must not be found either."""
    return [base64.b64encode(f"{user}:{p}".encode()).decode() for p in passwords]


def shown_anywhere(c: RunningController, workdir: Path, secrets: list[str]) -> list[tuple[str, str]]:
    """Where any of ``secrets`` is found: the log, /status, gitmesh status (text and JSON), the mirrors."""
    status = ["status", "--store", str(workdir / "store.db")]
    said = {
        "the log": c.log.read_text(),
        "/status": c.get("/status")[1].decode(),
        "gitmesh status": CliRunner().invoke(cli, status).output,
        "gitmesh status --output json": CliRunner().invoke(cli, [*status, "--output", "json"]).output,
        "the mirrors": "".join(
            p.read_bytes().decode("latin-1") for p in (workdir / "cache").rglob("*") if p.is_file()
        ),
    }
    assert json.loads(said["gitmesh status --output json"])["sources"]  # read, not an error
    return [(where, secret) for where, text in said.items() for secret in secrets if secret in text]


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._held.append(connection)
                self.accepted += 1

    def close(self) -> None:
        self.socket.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._thread.join()
        self.socket.close()
        with self._lock:
            for connection in self._held:
                connection.close()


@pytest.mark.parametrize("scheme", ["http", "ssh"])
def test_a_remote_that_never_answers_is_unavailable_and_sigterm_still_stops(
    scheme: str, tmp_path: Path, controller: list[RunningController]
) -> None:
    silent = SilentServer()
    keys = SshServer(tmp_path / "ssh")  # only its keys: the remote is the silent server
    source = (
        f"url: http://127.0.0.1:{silent.port}/mesh.git"
        if scheme == "http"
        else f"url: ssh://git@127.0.0.1:{silent.port}/mesh.git\n"
        f"    ssh: {{key_file: {keys.deploy_key}, known_hosts_file: {keys.known_hosts}}}"
    )
    try:
        c = start(controller, tmp_path, f"sources:\n  - name: mesh\n    {source}\n    path: mesh\n")
        started = time.monotonic()
        bound = (LOW_SPEED_TIME if scheme == "http" else SSH_TIMEOUT) + 30
        c.wait(lambda s: ready(c, "mesh")[1] == "SourceUnavailable", "SourceUnavailable", timeout=bound)
        print(f"{scheme}: SourceUnavailable {time.monotonic() - started:.1f}s after the start")
        status, _, message = ready(c, "mesh")
        assert status == "False" and f"127.0.0.1:{silent.port}" in message
        record = c.status()["mesh"]  # type: ignore[index]
        assert condition(record, "Reconciling") == ("True", "ProgressingWithRetry")
        assert record["lastAppliedRevision"] is None
        # The retry (after 1 s) is held by the silent server again: SIGTERM lands in a hung fetch.
        held = silent.accepted
        c.wait(lambda s: silent.accepted > held, "the retry connecting", timeout=30)
        helpers = talking_to(silent.port)
        assert helpers, "git and its helper (git-remote-http or ssh) talking to the silent server"
        assert c.process is not None
        c.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = c.process.wait(SIGTERM_BOUND)
        print(f"{scheme}: exited {time.monotonic() - sent:.1f}s after SIGTERM")
        assert code == 0, c.log.read_text()[-2000:]
        assert talking_to(silent.port) == [], f"outlived gitmesh: {helpers}"
    finally:
        silent.close()


def talking_to(port: int) -> list[str]:
    """The command lines of the processes named to connect to ``port`` (git or git-remote-http with
    the URL, ssh with ``-p PORT``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # not a process, or gone
            continue
        if Path(args[0]).name in ("git", "git-remote-http", "ssh") and (
            str(port) in args or any(f":{port}/" in a for a in args)
        ):
            found.append(" ".join(args))
    return found


def git_bytes(repo: GitRepo, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo.path, input=data, check=True, capture_output=True).stdout


def write_object(repo: GitRepo, kind: str, raw: bytes) -> str:
    """An object written as it is (``--literally``: git would refuse some of these trees); its id."""
    written = git_bytes(repo, "hash-object", "-t", kind, "--literally", "-w", "--stdin", data=raw)
    return written.decode().strip()


def tree_entry(mode: bytes, name: bytes, object_id: str) -> bytes:
    return mode + b" " + name + b"\0" + bytes.fromhex(object_id)


def crafted_commit(repo: GitRepo, mode: bytes, name: bytes, object_id: str | None = None) -> str:
    """A commit on top of HEAD whose ``mesh`` tree also holds the entry ``mode name object_id``
    (default: a tree holding one manifest), written as raw objects: git itself never writes such a
    tree, nor one naming an object that is not there."""
    if object_id is None:
        split = repo.git("rev-parse", "HEAD:mesh/bookstore/split.yaml").strip()
        object_id = write_object(repo, "tree", tree_entry(b"100644", b"split.yaml", split))
    listed = git_bytes(repo, "cat-file", "tree", "HEAD:mesh")
    mesh = write_object(repo, "tree", listed + tree_entry(mode, name, object_id))
    root = repo.git("ls-tree", "HEAD").replace(repo.git("rev-parse", "HEAD:mesh").strip(), mesh)
    top = git_bytes(repo, "mktree", data=root.encode()).decode().strip()
    commit = repo.git("commit-tree", top, "-p", "HEAD", "-m", f"crafted {name!r}").strip()
    repo.git("update-ref", "refs/heads/main", commit)
    return commit


def following(server: GitHttpServer, workdir: Path, controller: list[RunningController]) -> RunningController:
    """``gitmesh run`` following the served mesh (its password from a file), the head applied."""
    (workdir / "password").write_text(PASSWORD)
    c = start(
        controller,
        workdir,
        f"sources:\n  - name: mesh\n    url: {server.url('mesh.git')}\n    path: mesh\n    interval: 1s\n"
        "    auth: {username: deploy, password_file: password}\n",
    )
    c.wait(lambda s: bool(s) and s["mesh"]["lastAppliedRevision"], "the head applied")
    return c


def refused(c: RunningController, repo: GitRepo, crafted: str, good: str) -> str:
    """Push ``crafted``: it is refused, recorded and stalls the source, ``good`` stays applied. Then
    ``good`` is the head again. The refusal's summary."""
    repo.git("push", "-q", "--force", "origin", "main")
    record = c.wait_result(crafted, "invalid", "mesh")
    assert condition(record, "Stalled") == ("True", "ValidationFailed")
    assert record["lastAppliedRevision"] == good
    repo.git("reset", "-q", "--hard", good)
    return str(record["history"][0]["summary"])


def test_commits_with_unsafe_tree_entries_are_refused_by_path(
    mesh: tuple[GitRepo, GitHttpServer], tmp_path: Path, controller: list[RunningController]
) -> None:
    repo, server = mesh
    c, good = following(server, tmp_path, controller), head(repo)
    # .git's aliases: on NTFS (a short name, trailing dots) and on HFS+ (ignored code points)
    aliases = (b"GIT~1", b".git.", ".git\u200c".encode())
    for name in (b"..", b".", b".git", b".GIT", *aliases, b"../escape", b"/etc"):
        summary = refused(c, repo, crafted_commit(repo, b"40000", name), good)
        assert f"it holds a tree entry {f'mesh/{name.decode()}'!r}" in summary
    # A good commit after them is applied as usual.
    after = repo.commit("after", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "after"))})
    repo.git("push", "-q", "--force", "origin", "main")
    c.wait_applied(after, "mesh")
    assert c.stop() == 0


def test_a_commit_naming_a_missing_object_is_refused_and_recorded(
    git_repo: GitRepo, tmp_path: Path, controller: list[RunningController]
) -> None:
    """A local repository whose head names a blob it does not have: the first clone copies the
    objects as they are (a fetch would refuse to pack them), so the mirror holds such a commit."""
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    good = git_repo.commit("bookstore")
    missing = "1" * 40
    broken = crafted_commit(git_repo, b"100644", b"missing.yaml", missing)
    c = start(
        controller,
        tmp_path,
        f"sources:\n  - name: mesh\n    url: {git_repo.path}\n    path: mesh\n    interval: 1s\n",
    )
    record = c.wait_result(broken, "invalid", "mesh")
    assert missing in record["history"][0]["summary"]
    assert condition(record, "Stalled") == ("True", "ValidationFailed")
    assert record["lastAppliedRevision"] is None
    git_repo.git("reset", "-q", "--hard", good)
    after = git_repo.commit("after", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "after"))})
    c.wait_applied(after, "mesh")


def test_a_revision_larger_than_gitmesh_reads_is_refused_before_reading(
    mesh: tuple[GitRepo, GitHttpServer], tmp_path: Path, controller: list[RunningController]
) -> None:
    """Cheap to push, dear to read: one 2 MiB manifest named 33 times (a few KiB packed), and
    100,001 names for one empty file."""
    repo, server = mesh
    c, good = following(server, tmp_path, controller), head(repo)
    big = write_object(repo, "blob", b"# " + b"x" * (MAX_FILE_BYTES - 3) + b"\n")
    empty = write_object(repo, "blob", b"")
    many = {
        f"more than {MAX_REVISION_BYTES:,} bytes of manifests": [(f"{i}.yaml", big) for i in range(33)],
        f"more than {MAX_ENTRIES:,} files and directories": [(f"{i}", empty) for i in range(MAX_ENTRIES + 1)],
    }
    for said, entries in many.items():
        listing = b"".join(tree_entry(b"100644", n.encode(), oid) for n, oid in sorted(entries))
        crafted = crafted_commit(repo, b"40000", b"many", write_object(repo, "tree", listing))
        assert f"commit {crafted[:12]} is refused: mesh holds {said}" in refused(c, repo, crafted, good)


def test_a_password_file_that_is_a_pipe_is_refused_not_waited_on(
    mesh: tuple[GitRepo, GitHttpServer], tmp_path: Path, controller: list[RunningController]
) -> None:
    _, server = mesh
    os.mkfifo(tmp_path / "password")  # nothing ever writes to it
    c = start(
        controller,
        tmp_path,
        f"sources:\n  - name: mesh\n    url: {server.url('mesh.git')}\n    path: mesh\n"
        "    auth: {username: deploy, password_file: password}\n",
    )
    c.wait(lambda s: ready(c, "mesh")[1] == "FetchFailed", "the fetch failing")
    assert f"{tmp_path / 'password'} does not exist or is not a file" in ready(c, "mesh")[2]
    assert c.stop() == 0


def test_the_overall_deadline_and_a_stop_end_a_fetch_no_bound_of_git_catches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """git:// has no low-speed limit nor ssh timeout: only gitmesh's own deadline, or its stop, ends
    a fetch from a server that never answers (both shortened or set here, in process)."""
    silent = SilentServer()
    url = f"git://127.0.0.1:{silent.port}/mesh.git"
    try:
        stop = threading.Event()
        threading.Thread(
            target=lambda: eventually(lambda: silent.accepted, bool, "connected") and stop.set()
        ).start()
        with pytest.raises(SourceError, match="abandoned: asked to stop"):
            mirror(url, stop=stop)
        monkeypatch.setattr("gitmesh.sync.git.FETCH_DEADLINE", 2)
        with pytest.raises(SourceUnavailable, match=f"cannot read repository {url}: no complete"):
            mirror(url)
        assert talking_to(silent.port) == []
    finally:
        silent.close()
