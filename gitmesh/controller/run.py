"""``gitmesh run``: the controller and the ADS server in one process, stopped cleanly by SIGTERM.

The reconciler writes to the cluster; the ADS server follows the cluster's watch (the embedded
store's version, or a Kubernetes watch) and republishes to the sidecars. Nothing else connects
them, so a revision that is not applied never reaches a sidecar.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gitmesh import pipeline, serve
from gitmesh.certs.choice import Choice
from gitmesh.certs.store import Keeper
from gitmesh.cluster.port import Live, Watched
from gitmesh.controller.config import DEFAULT_HTTP_ADDRESS, RolloutSettings
from gitmesh.controller.console import Console, LiveMesh
from gitmesh.controller.httpd import ControllerPort
from gitmesh.controller.inject import Injection, InjectWebhook, publisher
from gitmesh.controller.leader import replica_name
from gitmesh.controller.metrics import Fleet, Metrics
from gitmesh.controller.reconciler import Reconciler
from gitmesh.controller.schedule import Controller
from gitmesh.errors import GitmeshError, MetricsError
from gitmesh.kube import review
from gitmesh.kube.certificate_requests import CertificateRequests
from gitmesh.rollout import driver
from gitmesh.rollout.envoy_stats import EnvoyStats
from gitmesh.rollout.metrics import MetricsSource
from gitmesh.rollout.prometheus import Prometheus
from gitmesh.settings import Settings
from gitmesh.state import XdsReports
from gitmesh.sync.source import Source

if TYPE_CHECKING:
    from gitmesh.controller.leader import Elector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What ``gitmesh run`` does beyond the cluster and state it is given."""

    sources: tuple[Source, ...]
    xds_address: str
    http_address: str | None = None  # None: DEFAULT_HTTP_ADDRESS when there are sources, else no port
    webhook_secret: bytes | None = None
    http_token: bytes | None = None  # the bearer token that lets a client ask for a reconcile
    cert_lifetime: datetime.timedelta | None = None  # of workload certificates; None: MeshConfig's, or 24h
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)
    inject: Injection | None = None  # serve the sidecar-injection webhook
    fleet: Fleet | None = None  # a reader of a fleet's hub, shown on /metrics and /console
    # Told, once made, how to give a source a new ref and where the mesh's metrics come from (a fleet
    # agent follows a wave's commit and measures its member's mesh health with them).
    attach: Callable[[Callable[[Source], None], MetricsSource], None] | None = None
    # The workload certificates' provider the configuration names (None: none), asked again and again.
    certificates: Callable[[], Choice | None] = lambda: None


ROLLOUT_TICK_SECONDS = 1.0  # how often rollouts under way are looked at (each analyses on its interval)
ROUTE_STATUS_SECONDS = 1.0  # how often the mesh's version is looked at for route status to write
FILES_KEPT = 128  # open files kept from sidecars for the store, Git, sidecar stats and logs
STOP_DEADLINE = 9.0  # seconds from SIGTERM to exit, an apply or a remote under way or not


def run(options: Options, settings: Settings, elector: Elector | None = None) -> None:
    """Reconcile the sources into the cluster and serve its objects over ADS (mTLS, with the mesh
    CA of the state stores) until SIGTERM or SIGINT. With an ``elector``, ADS is served at once but
    reconciles and rollouts start only once this replica leads."""
    stopping = threading.Event()
    metrics = Metrics()
    if options.fleet:
        metrics.watch_fleet(options.fleet.members)
    notify = driver.webhook(options.rollouts.webhook)
    reconciler = Reconciler(options.sources, settings, metrics, stopping, notify)
    controller = Controller(reconciler, stopping)
    address = options.http_address or (DEFAULT_HTTP_ADDRESS if options.sources or options.fleet else None)
    open_files = _raise_open_files_limit()
    reporting = _Reporting(settings.objects.watch(), settings.state.xds, metrics)
    mesh_metrics: MetricsSource = (
        Prometheus(options.rollouts.prometheus)
        if options.rollouts.prometheus
        else EnvoyStats(reporting.sidecars)
    )
    if options.attach:
        options.attach(controller.retarget, mesh_metrics)
    port = (
        ControllerPort(
            address,
            controller,
            metrics,
            options.webhook_secret,
            options.http_token,
            settings.review,
            open_files,
            Console(
                reporting.whole,
                lambda: driver.load(settings),
                reconciler.records,
                LiveMesh(reporting.version, lambda: (live.obj for live in reporting.list_managed().values())),
                options.fleet,
            ),
        )
        if address
        else None
    )
    rollouts = threading.Thread(
        target=_walk_rollouts,
        args=(options.rollouts, settings, mesh_metrics, reconciler.apply_lock, notify, stopping),
        name="rollouts",
        daemon=True,
    )
    statuses = threading.Thread(
        target=_write_route_status, args=(settings, reporting, stopping), name="route-status", daemon=True
    )
    leading = _Leading(controller, (rollouts, statuses), elector, stopping)
    injecting = (
        InjectWebhook(
            options.inject.address,
            options.inject.config,
            settings.state.ca,
            publisher(settings),
            stopping,
            client=settings.cluster,
        )
        if options.inject
        else None
    )
    if injecting:
        injecting.start()
    # Sidecars' connections may take what the HTTP port and the process's own files leave: past that
    # they are closed as they arrive, rather than starving the store, Git and the HTTP port.
    xds_connections = max(16, open_files - (port.max_connections if port else 0) - FILES_KEPT)
    try:
        cluster = settings.cluster
        pods = functools.partial(review.pod, cluster) if cluster is not None else None
        requests = CertificateRequests(cluster) if cluster is not None else None
        asyncio.run(
            _run(options, leading, port, reporting, settings.state.ca, xds_connections, pods, requests)
        )
    finally:
        stopping.set()
        if injecting:
            injecting.stop()
        for worker in (rollouts, statuses):
            if worker.ident is not None:  # started: this replica led
                worker.join(timeout=10)
        leading.release()


class _Leading:
    """Starts the reconciles and the workers (rollouts, route status): at once, or once the elector
    holds the Lease. Losing it
    ends the process there and then (an apply under way included): the Lease's deadlines leave
    another replica no chance to apply before."""

    def __init__(
        self,
        controller: Controller,
        workers: tuple[threading.Thread, ...],
        elector: Elector | None,
        stopping: threading.Event,
    ) -> None:
        self.controller = controller
        self.workers = workers
        self.elector = elector
        self.stopping = stopping
        self._started = False
        self._lock = threading.Lock()
        self._electing: threading.Thread | None = None

    def start(self) -> None:
        if self.elector is None:
            self._start()
            return
        self._electing = threading.Thread(
            target=self.elector.run, args=(self.stopping, _lost), name="leader", daemon=True
        )
        self._electing.start()
        threading.Thread(
            target=self._when_leading, args=(self.elector,), name="follower", daemon=True
        ).start()

    def release(self) -> None:
        """Once nothing applies here any more (stopped, rollouts ended), give the Lease up: the next
        leader need not wait for it to expire."""
        if self.elector is None or self._electing is None or any(w.is_alive() for w in self.workers):
            return
        self._electing.join()  # its step under way could take the Lease again
        self.elector.release()

    def _when_leading(self, elector: Elector) -> None:
        while not self.stopping.is_set():
            if elector.leading.wait(1.0):
                self._start()
                return

    def _start(self) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            self._started = True
            self.controller.start()
            for worker in self.workers:
                worker.start()

    def stop(self) -> None:
        """No new runs; waits for the ones under way."""
        with self._lock:
            self.stopping.set()
            if self._started:
                self.controller.stop()


def _lost() -> None:
    log.error("this replica no longer leads: exiting so that only the new leader applies")
    logging.shutdown()
    os._exit(1)


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
    rollouts: RolloutSettings,
    settings: Settings,
    metrics: MetricsSource,
    apply_lock: threading.Lock,
    notify: driver.Notify,
    stopping: threading.Event,
) -> None:
    """Walk every rollout under way, reading metrics from Prometheus or from the connected sidecars.
    A tick holds the reconciler's apply lock: a step written meanwhile would make its plan stale."""
    runner = driver.Runner(settings, metrics, notify, rollouts.push_reverts)
    while not stopping.wait(ROLLOUT_TICK_SECONDS):
        try:
            with apply_lock:
                runner.tick(time.time())
        except GitmeshError as e:  # the cluster may be back next time; the state is kept
            log.warning("rollout tick failed: %s", e)


def _write_route_status(settings: Settings, reporting: _Reporting, stopping: threading.Event) -> None:
    """Keep every route's status in step with the mesh served: each time anything the mesh reads
    changes (a route anyone made, a Service, a ReferenceGrant), the statuses that differ are written."""
    seen = None
    while not stopping.wait(ROUTE_STATUS_SECONDS):
        version = reporting.version()
        if version == seen:
            continue
        try:
            pipeline.write_route_status(settings, (live.obj for live in reporting.list_managed().values()))
            seen = version
        except GitmeshError as e:  # the cluster may be back next time
            log.warning("route status not written: %s", e)


async def _run(
    options: Options,
    leading: _Leading,
    port: ControllerPort | None,
    mesh: serve.MeshBackend,
    keeper: Keeper,
    xds_connections: int,
    pods: serve.Pods | None,
    certificate_requests: CertificateRequests | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopping, stop)
    leading.start()
    if port:
        port.start()
    try:
        await serve.run(
            mesh,
            options.xds_address,
            keeper=keeper,
            cert_lifetime=options.cert_lifetime,
            certificates=options.certificates,
            certificate_requests=certificate_requests,
            stop=stop,
            max_connections=xds_connections,
            pods=pods,
        )
    finally:
        await loop.run_in_executor(None, leading.stop)  # lets an apply under way finish
        if port:
            port.stop()


def _stopping(stop: asyncio.Event) -> None:
    """Stop gracefully, and for certain: whatever still runs after STOP_DEADLINE (a cluster or a remote
    that stopped answering) is cut short, as a supervisor's SIGKILL would a little later."""
    if stop.is_set():
        return
    stop.set()
    deadline = threading.Timer(STOP_DEADLINE, _exit_now)
    deadline.daemon = True
    deadline.start()


def _exit_now() -> None:
    log.error("still stopping %.0fs after the signal: exiting now", STOP_DEADLINE)
    logging.shutdown()
    os._exit(1)


class _Reporting:
    """The ADS server's source: the cluster's watch, with the reports of the sidecars kept in the
    xDS report store (this replica's beside the others') and turned into metrics."""

    def __init__(self, watched: Watched, reports: XdsReports, metrics: Metrics) -> None:
        self.watched = watched
        self.reports = reports
        self.metrics = metrics
        self.report: Mapping[str, Any] = {}  # this replica's latest

    def version(self) -> str:
        return self.watched.version()

    def list_managed(self) -> Mapping[Any, Live]:
        return self.watched.list()

    def record_xds(self, report: Mapping[str, Any]) -> None:
        self.report = {**report, "replica": replica_name()}
        self.metrics.xds(report)
        self.reports.save(self.report)

    def sidecars(self) -> dict[str, str]:
        """Every replica's sidecars (admin address -> service): a rollout is judged on the whole
        mesh, whichever replica each sidecar is connected to."""
        try:
            whole = self.reports.latest() or {}
        except GitmeshError as e:
            raise MetricsError(f"cannot read the sidecars of the other replicas: {e}") from e
        return {**whole.get("sidecars", {}), **self.report.get("sidecars", {})}

    def whole(self) -> Mapping[str, Any]:
        """Every replica's report as one, for the console; this replica's own while the store
        cannot be read."""
        try:
            return self.reports.latest() or self.report
        except GitmeshError as e:
            log.warning("showing this replica's sidecars only: %s", e)
            return self.report
