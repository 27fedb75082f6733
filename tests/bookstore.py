"""The bookstore demo as the integration tests run it: by delta xDS, against a Kubernetes
cluster, at a pod's address, or with short-lived certificates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gitmesh import settings
from gitmesh.demo import Demo


class Bookstore(Demo):
    def __init__(
        self,
        workdir: Path,
        *,
        delta: bool = False,
        kubeconfig: Path | None = None,
        host: str = Demo.host,
        cert_lifetime: str = Demo.cert_lifetime,
        walk_rollouts: bool = True,
    ) -> None:
        self.delta, self.host, self.cert_lifetime = delta, host, cert_lifetime
        self.walk_rollouts = walk_rollouts
        self.kubeconfig = kubeconfig  # a cluster instead of the embedded store
        super().__init__(workdir)

    def settings(self) -> settings.Settings:
        return settings.kubernetes(str(self.kubeconfig)) if self.kubeconfig else super().settings()

    def run_options(self) -> list[str]:
        where = ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else super().run_options()
        # gitmesh run walks rollouts too: a test that walks them with its own runner leaves its
        # gitmesh run without metrics (a refused Prometheus), so that it never moves one.
        return where if self.walk_rollouts else [*where, "--rollout-prometheus", "http://127.0.0.1:9"]


@contextlib.contextmanager
def running(
    workdir: Path,
    *,
    delta: bool = False,
    kubeconfig: Path | None = None,
    host: str = Demo.host,
    cert_lifetime: str = Demo.cert_lifetime,
    walk_rollouts: bool = True,
) -> Iterator[Bookstore]:
    workdir.mkdir(parents=True, exist_ok=True)
    bookstore = Bookstore(
        workdir,
        delta=delta,
        kubeconfig=kubeconfig,
        host=host,
        cert_lifetime=cert_lifetime,
        walk_rollouts=walk_rollouts,
    )
    try:
        bookstore.start()
        yield bookstore
    finally:
        bookstore.close()
