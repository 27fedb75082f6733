from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

# Before anything imports grpc: its fork handlers, run in the child of a subprocess started with a
# preexec_fn (kube-apiserver, gitmesh run with an open-files limit) while the test process has gRPC
# threads, can abort that child before it execs (7 of 200 such forks in a test of it).
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import pytest
import yaml

from tests.controller import RunningController

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REPO = REPO_ROOT / "examples" / "repo"
# The example repo's size, counted here independently of gitmesh's loader.
EXAMPLE_FILES = sorted(EXAMPLE_REPO.rglob("*.yaml"))
EXAMPLE_OBJECTS = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in EXAMPLE_FILES)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist's loadgroup each file is one group, as with loadfile, except that all the node
    tests are one: there is one node per host, so they must share one worker. First, because
    xdist reads the groups in a hook of the same name."""
    if not config.pluginmanager.hasplugin("xdist"):  # -p no:xdist: no groups, and no such mark
        return
    for item in items:
        path = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("node" if path.startswith("tests/node/") else path))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's git config, cache or GITMESH_* settings."""
    for key in list(os.environ):
        if key.startswith("GITMESH_") or key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Author")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "author@example.com")


class GitRepo:
    """A real git repository on disk that a test writes and commits to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.path, check=True, capture_output=True, text=True
        ).stdout

    def write(self, files: Mapping[str, str | bytes]) -> None:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)

    def remove(self, *names: str) -> None:
        self.git("rm", "-q", "-r", *names)

    def commit(self, message: str, files: Mapping[str, str | bytes] | None = None) -> str:
        if files:
            self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Iterator[GitRepo]:
    yield GitRepo(tmp_path / "mesh-repo")


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    """A repository holding the example mesh under ``mesh/``, committed."""
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    return git_repo


@pytest.fixture
def controllers() -> Iterator[list[RunningController]]:
    """Controllers a test starts; each is stopped with SIGTERM at the end and must exit 0."""
    started: list[RunningController] = []
    yield started
    codes = [c.stop() for c in started if c.process is not None and c.process.poll() is None]
    assert all(code == 0 for code in codes), codes
