"""Fixtures for integration tests that need a real Kubernetes control plane.

``kube_env`` is one etcd with one kube-apiserver (``kube_env.cluster``);
``add_kube_cluster`` starts further apiservers on the same etcd, each one a
separate cluster. Everything is session-scoped: a cluster starts in a few
seconds, so tests share them and keep their objects apart by namespace.

The binaries come from ``testenv/build.sh``. The first run on a machine builds
them (minutes, see testenv/README.md); that happens once, right after
collection, so that it does not count against a single test's timeout. A
failed build is not a skip: every test that asked for the control plane fails
with the build's own error.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from tests import cert_manager, vault
from tests.kube import Cluster, KubeEnv, KubeEnvError, build_binaries

_FIXTURES_NEEDING_BINARIES = {"kube_binaries", "kube_env", "add_kube_cluster"}
_build: dict[str, Path | str] = {}
_vault_build: dict[str, Path | str] = {}  # HashiCorp Vault (testenv/build.sh vault), the same way
_cert_manager_build: dict[str, Path | str] = {}  # cert-manager (testenv/build.sh cert-manager), too
_OTHER_BUILDS = {
    "vault_binary": ("Vault", vault.build, _vault_build),
    "cert_manager_build": ("cert-manager", cert_manager.build, _cert_manager_build),
}


def _build_other(fixture: str) -> None:
    """Build once; a failure is kept for the tests that ask for it, never raised here."""
    _, build, kept = _OTHER_BUILDS[fixture]
    if "path" not in kept and "error" not in kept:
        try:
            kept["path"] = build()
        except RuntimeError as exc:
            kept["error"] = str(exc)


def _run_other_build(fixture: str) -> Path:
    _build_other(fixture)
    what, _, kept = _OTHER_BUILDS[fixture]
    if "error" in kept:
        pytest.fail(f"cannot build {what}:\n{kept['error']}", pytrace=False)
    path = kept["path"]
    assert isinstance(path, Path)
    return path


def _run_build() -> Path:
    if "path" not in _build and "error" not in _build:
        try:
            _build["path"] = build_binaries()
        except KubeEnvError as exc:
            _build["error"] = str(exc)
    if "error" in _build:
        pytest.fail(f"cannot build the test control plane:\n{_build['error']}", pytrace=False)
    path = _build["path"]
    assert isinstance(path, Path)
    return path


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before the first test starts if any selected test needs them."""
    if session.config.option.collectonly:
        return
    wanted = any(
        _FIXTURES_NEEDING_BINARIES.intersection(getattr(item, "fixturenames", ())) for item in session.items
    )
    for fixture, (what, _, _) in _OTHER_BUILDS.items():
        if any(fixture in getattr(item, "fixturenames", ()) for item in session.items):
            started = time.monotonic()
            _build_other(fixture)
            elapsed = time.monotonic() - started
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None and elapsed > 5:
                reporter.write_line(f"testenv/build.sh built {what} in {elapsed:.0f}s")
    if wanted and "path" not in _build and "error" not in _build:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        started = time.monotonic()
        try:
            _build["path"] = build_binaries()
        except KubeEnvError as exc:
            _build["error"] = str(exc)
        elapsed = time.monotonic() - started
        if reporter is not None and elapsed > 5:
            reporter.write_line(f"testenv/build.sh built kube-apiserver and etcd in {elapsed:.0f}s")


@pytest.fixture(scope="session")
def kube_binaries() -> Path:
    """Directory with the cached ``kube-apiserver`` and ``etcd`` binaries."""
    return _run_build()


@pytest.fixture(scope="session")
def vault_binary() -> Path:
    """The cached ``vault`` binary (built right after collection when a test asks for it)."""
    return _run_other_build("vault_binary")


@pytest.fixture(scope="session")
def cert_manager_build() -> Path:
    """The directory of the cached ``cert-manager`` binary and its CRDs (built the same way)."""
    return _run_other_build("cert_manager_build")


@pytest.fixture(scope="session")
def kube_env(kube_binaries: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    """etcd plus one ready kube-apiserver, available as ``kube_env.cluster``."""
    env = KubeEnv(kube_binaries, tmp_path_factory.mktemp("kube-env"))
    with env:
        env.add_cluster("main")
        yield env


@pytest.fixture(scope="session")
def add_kube_cluster(kube_env: KubeEnv) -> Callable[..., Cluster]:
    """``add_kube_cluster(name=None)`` starts another apiserver on ``kube_env``'s etcd."""
    return kube_env.add_cluster


@pytest.fixture
def crd_cluster(add_kube_cluster: Callable[..., Cluster]) -> Iterator[Cluster]:
    """A fresh, empty cluster (its own apiserver) with gitmesh's CRDs installed; stopped after the test."""
    c = add_kube_cluster()
    installed = CliRunner().invoke(cli, ["install", "crds", "--kubeconfig", str(c.kubeconfig)])
    assert installed.exit_code == 0, installed.output
    yield c
    c.stop()


@pytest.fixture
def pod_address() -> Iterator[str]:
    """An address that stands in for the pods: the apiserver refuses loopback endpoints, so one from
    TEST-NET-1 (never routed) is put on this host's loopback interface for the test."""
    address = f"192.0.2.{random.randint(2, 254)}"
    subprocess.run(["ip", "address", "add", f"{address}/32", "dev", "lo"], check=True, capture_output=True)
    try:
        yield address
    finally:
        subprocess.run(
            ["ip", "address", "del", f"{address}/32", "dev", "lo"], check=True, capture_output=True
        )
