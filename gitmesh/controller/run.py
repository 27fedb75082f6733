"""``gitmesh run``: the controller and the ADS server in one process, stopped cleanly by SIGTERM.

The reconciler writes to the backend; the ADS server follows the backend (the embedded store's
version, or a cluster watch) and republishes to the sidecars. Nothing else connects them, so a
revision that is not applied never reaches a sidecar.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gitmesh import serve
from gitmesh.certs import ca
from gitmesh.certs.store import Keeper
from gitmesh.cluster.backend import ClusterBackend, Live
from gitmesh.controller.config import DEFAULT_HTTP_ADDRESS, RolloutSettings
from gitmesh.controller.httpd import ControllerPort
from gitmesh.controller.metrics import Metrics
from gitmesh.controller.reconciler import Reconciler
from gitmesh.controller.schedule import Controller
from gitmesh.errors import GitmeshError
from gitmesh.rollout import driver
from gitmesh.rollout.envoy_stats import EnvoyStats
from gitmesh.rollout.metrics import MetricsSource
from gitmesh.rollout.prometheus import Prometheus
from gitmesh.sync.source import Source

if TYPE_CHECKING:
    from gitmesh.cluster.kube import Reviewed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    sources: tuple[Source, ...]
    xds_address: str
    http_address: str | None = None  # None: DEFAULT_HTTP_ADDRESS when there are sources, else no port
    webhook_secret: bytes | None = None
    http_token: bytes | None = None  # the bearer token that lets a client ask for a reconcile
    cert_lifetime: datetime.timedelta = ca.DEFAULT_LIFETIME  # of the workload certificates served
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)


ROLLOUT_TICK_SECONDS = 1.0  # how often rollouts under way are looked at (each analyses on its interval)


def run(
    settings: Settings,
    open_backend: Callable[[], ClusterBackend],
    mesh: serve.MeshBackend,
    keeper: Keeper,
    review: Callable[[str, str], Reviewed] | None = None,
) -> None:
    """Reconcile the sources into the backend and serve ``mesh`` over ADS (mTLS, with the mesh CA
    ``keeper`` holds) until SIGTERM or SIGINT. ``review`` asks a cluster whether a bearer token's
    user may ask for a reconcile of a source (when there is a cluster to ask)."""
    stopping = threading.Event()
    metrics = Metrics()
    notify = driver.webhook(settings.rollouts.webhook)
    reconciler = Reconciler(settings.sources, open_backend, metrics, stopping, notify)
    controller = Controller(reconciler, stopping)
    address = settings.http_address or (DEFAULT_HTTP_ADDRESS if settings.sources else None)
    open_files = _raise_open_files_limit()
    port = (
        ControllerPort(
            address, controller, metrics, settings.webhook_secret, settings.http_token, review, open_files
        )
        if address
        else None
    )
    reporting = _Reporting(mesh, metrics)
    rollouts = threading.Thread(
        target=_walk_rollouts,
        args=(settings.rollouts, open_backend, reporting, reconciler.apply_lock, notify, stopping),
        name="rollouts",
        daemon=True,
    )
    rollouts.start()
    try:
        asyncio.run(_run(settings, controller, port, reporting, keeper))
    finally:
        stopping.set()
        rollouts.join(timeout=10)


def _raise_open_files_limit() -> int:
    """The soft limit on open files raised to the hard one (the usual soft 1,024 is soon taken by
    sidecars' streams and HTTP clients); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    log.info("open files: at most %d", soft)
    return soft


def _walk_rollouts(
    settings: RolloutSettings,
    open_backend: Callable[[], ClusterBackend],
    reporting: _Reporting,
    apply_lock: threading.Lock,
    notify: driver.Notify,
    stopping: threading.Event,
) -> None:
    """Walk every rollout under way, reading metrics from Prometheus or from the connected sidecars.
    A tick holds the reconciler's apply lock: a step written meanwhile would make its plan stale."""
    metrics: MetricsSource = (
        Prometheus(settings.prometheus) if settings.prometheus else EnvoyStats(lambda: reporting.admins)
    )
    runner = driver.Runner(open_backend(), metrics, notify, settings.push_reverts)
    while not stopping.wait(ROLLOUT_TICK_SECONDS):
        try:
            with apply_lock:
                runner.tick(time.time())
        except GitmeshError as e:  # the backend may be back next time; the state is kept there
            log.warning("rollout tick failed: %s", e)


async def _run(
    settings: Settings,
    controller: Controller,
    port: ControllerPort | None,
    mesh: serve.MeshBackend,
    keeper: Keeper,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller.start()
    if port:
        port.start()
    try:
        await serve.run(
            mesh, settings.xds_address, keeper=keeper, cert_lifetime=settings.cert_lifetime, stop=stop
        )
    finally:
        await loop.run_in_executor(None, controller.stop)  # lets an apply under way finish
        if port:
            port.stop()


class _Reporting:
    """The ADS server's source, with its reports of the sidecars also turned into metrics."""

    def __init__(self, inner: serve.MeshBackend, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.admins: list[str] = []  # the connected sidecars' admin interfaces, for rollout metrics

    def version(self) -> str:
        return self.inner.version()

    def list_managed(self) -> Mapping[Any, Live]:
        return self.inner.list_managed()

    def record_xds(self, report: Mapping[str, Any]) -> None:
        self.admins = list(report["admins"])
        self.metrics.xds(report)
        self.inner.record_xds(report)
