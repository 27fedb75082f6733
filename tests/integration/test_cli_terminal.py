"""The command on a real terminal (a pty): it asks before writing to a cluster, and colours only when
it may. And what deleting a Namespace of a real cluster would take with it."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import eventually
from tests import factory as f
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.kube import Cluster

pytestmark = pytest.mark.integration

GITMESH = [sys.executable, "-m", "gitmesh"]


def on_terminal(args: list[str], answer: str | None = None, **env: str) -> tuple[int, str]:
    """Run gitmesh with a pty as its stdin, stdout and stderr; type ``answer`` at a [y/N] prompt."""
    master, slave = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR", "KUBECONFIG")}
    proc = subprocess.Popen(
        [*GITMESH, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environ | {"TERM": "xterm-256color", "COLUMNS": "200"} | env,
        start_new_session=True,
    )
    os.close(slave)
    # poll, not select: a busy test worker has descriptors above select's limit of 1024.
    poller = select.poll()
    poller.register(master, select.POLLIN)
    seen, answered = b"", False
    try:
        while True:
            if not poller.poll(1000):
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if answer is not None and not answered and b"[y/N]" in seen:
                os.write(master, answer.encode() + b"\r")
                answered = True
        return proc.wait(timeout=60), seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_colours_only_when_allowed(tmp_path: Path) -> None:
    args = ["suspend", "nope", "--store", str(tmp_path / "store.db")]
    code, coloured = on_terminal(args)
    assert code == 1
    assert "\x1b[1;31merror: " in coloured  # bold red on a terminal
    for plain in (on_terminal(args, NO_COLOR="1")[1], on_terminal(["--no-color", *args])[1]):
        assert "error: no source 'nope'" in plain
        assert "31m" not in plain, plain  # no red: colour off, emphasis kept
    assert not (tmp_path / "store.db").exists()


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    return git_repo


def test_apply_to_a_cluster_asks_on_a_terminal_only(crd_cluster: Cluster, mesh: GitRepo) -> None:
    apply = ["apply", "--repo", str(mesh.path), "--path", "mesh", "--kubeconfig", str(crd_cluster.kubeconfig)]
    code, declined = on_terminal(apply, answer="n")
    assert code == 1, declined
    assert "target: kube:" in declined and f"at {crd_cluster.server}" in declined
    assert "[y/N]" in declined and "Nothing was changed." in declined
    assert not crd_cluster.kubectl("get", "trafficsplits", "-A", "-o", "name").stdout.strip()
    code, accepted = on_terminal(apply, answer="y")
    assert code == 0, accepted
    assert "Applied." in accepted
    assert crd_cluster.kubectl("get", "trafficsplits", "-A", "-o", "name").stdout.strip()
    # In CI, with --yes, or from a pipe: never a prompt, never a hang.
    for args, env in ((apply, {"CI": "true"}), ([*apply, "--yes"], {})):
        code, unasked = on_terminal(args, **env)
        assert code == 0 and "[y/N]" not in unasked, unasked
    piped = subprocess.run([*GITMESH, *apply], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert piped.returncode == 0 and "[y/N]" not in piped.stderr, piped.stderr


def test_a_namespace_holding_objects_gitmesh_did_not_make_is_kept(
    crd_cluster: Cluster, git_repo: GitRepo
) -> None:
    kube = ["--repo", str(git_repo.path), "--kubeconfig", str(crd_cluster.kubeconfig)]
    git_repo.commit("shop", {"shop.yaml": f.dump(f.namespace("shop"), f.service_account("shop", "mine"))})
    assert CliRunner().invoke(cli, ["apply", *kube]).exit_code == 0
    crd_cluster.kubectl("create", "configmap", "theirs", "-n", "shop")
    git_repo.remove("shop.yaml")
    git_repo.commit("no shop", {"kept.yaml": f.dump(f.namespace("kept"))})
    planned = CliRunner().invoke(cli, ["plan", *kube])
    assert "Deleting Namespace/shop also deletes: ConfigMap/shop/theirs" in planned.stdout, planned.output
    refused = CliRunner().invoke(cli, ["apply", *kube])
    assert refused.exit_code == 1
    assert "Namespace/shop holds 1: ConfigMap/shop/theirs" in refused.output
    assert crd_cluster.kubectl("get", "configmap", "theirs", "-n", "shop", "-o", "name").stdout.strip()
    assert crd_cluster.kubectl("get", "serviceaccount", "mine", "-n", "shop", "-o", "name").stdout.strip()


def _in_tmux(tmp_path: Path, args: list[str], answer: str) -> str:
    """Run gitmesh in a tmux pane as a person would, type ``answer`` at its [y/N] prompt, and return
    the screen once the command has finished."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: make tmux (make test does it)")
    tmux = ["tmux", "-L", f"gitmesh-ask-{tmp_path.name}"]  # a server of its own
    environ = ["env", "-u", "CI", "-u", "NO_COLOR", "-u", "KUBECONFIG", "-u", "COLUMNS", "-u", "LINES"]
    shell = " ".join([*environ, *GITMESH, *args]) + "; echo exit=$?; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "40", shell], check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    try:
        eventually(screen, lambda s: "[y/N]" in s, "the question on the screen")
        subprocess.run([*tmux, "send-keys", answer, "Enter"], check=True)
        return str(eventually(screen, lambda s: "exit=" in s, "the command finishing"))
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


def test_install_and_uninstall_ask_a_person_first(crd_cluster: Cluster, tmp_path: Path) -> None:
    kube = ["--kubeconfig", str(crd_cluster.kubeconfig)]
    install = [
        "install",
        "--image",
        "localhost/gitmesh:dev",
        "--repo",
        "https://git.example.com/m.git",
        *kube,
    ]
    declined = _in_tmux(tmp_path, install, "n")
    assert "target: kube:" in declined and crd_cluster.server in declined, declined
    assert "Install gitmesh (2 replicas of localhost/gitmesh:dev) to kube:" in declined
    assert "Nothing was changed." in declined and "exit=1" in declined
    namespaces = crd_cluster.kubectl("get", "namespaces", "-o", "name").stdout
    assert "namespace/gitmesh-system" not in namespaces
    declined = _in_tmux(tmp_path, ["uninstall", *kube], "n")
    assert "Uninstall gitmesh from kube:" in declined and "exit=1" in declined, declined
    assert crd_cluster.kubectl("get", "crd", "trafficsplits.split.smi-spec.io", "-o", "name").stdout.strip()
