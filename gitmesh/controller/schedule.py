"""When each source is reconciled: on its interval (with jitter), on its drift interval, on a
webhook or a request, and again after a failure (with backoff). Never two runs of one source at once.

Every source has one apscheduler job that does the work (``max_instances=1``). Triggers that
arrive while it runs are remembered and served by the same run when it finishes, so a push
announced in the middle of a reconcile is never lost.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gitmesh.controller.reconciler import Reconciler
from gitmesh.errors import GitmeshError
from gitmesh.sync.source import Source

log = logging.getLogger("gitmesh.controller")

JITTER = 0.1  # of the interval: sources with one interval do not all fetch at the same moment


class Controller:
    def __init__(self, reconciler: Reconciler, stopping: threading.Event) -> None:
        self.reconciler = reconciler
        self._stopping = stopping
        self._lock = threading.Lock()
        self._pending: dict[str, set[str]] = {name: set() for name in reconciler.sources}
        self._running: set[str] = set()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(2, len(reconciler.sources)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self) -> None:
        now = datetime.now(UTC)
        for name, source in self.reconciler.sources.items():
            self._pending[name].add("start")
            self.scheduler.add_job(
                self._run,
                IntervalTrigger(seconds=source.interval, jitter=source.interval * JITTER),
                args=[name],
                id=name,
                next_run_time=now,
            )
            self.scheduler.add_job(
                self.trigger,
                IntervalTrigger(seconds=source.drift_interval, jitter=source.drift_interval * JITTER),
                args=[name, "drift"],
                id=f"{name}/drift",
            )
        self.scheduler.start()

    def stop(self) -> None:
        """No new runs; wait for the ones under way (a reconcile stops before applying once
        ``stopping`` is set, and an apply under way finishes)."""
        self._stopping.set()
        self.scheduler.shutdown(wait=True)

    def trigger(self, name: str, reason: str) -> bool:
        """Reconcile ``name`` now (or right after the run under way). False for an unknown source."""
        if name not in self._pending:
            return False
        with self._lock:
            self._pending[name].add(reason)
            # Not started (a replica that does not lead): the reason is served by the first run.
            if name in self._running or self._stopping.is_set() or not self.scheduler.running:
                return True
        self.scheduler.modify_job(name, next_run_time=datetime.now(UTC))
        return True

    def retarget(self, source: Source) -> None:
        """Follow another ref for a known source (same name, repository and path) and reconcile it
        now: a fleet wave moving the member's commit."""
        self.reconciler.sources[source.name] = source
        self.trigger(source.name, "manual")

    def _run(self, name: str) -> None:
        with self._lock:
            self._running.add(name)
            reasons = frozenset(self._pending[name] or {"interval"})
            self._pending[name].clear()
        try:
            while not self._stopping.is_set():
                try:
                    retry = self.reconciler.reconcile(name, reasons)
                except GitmeshError as e:  # the backend itself failed (e.g. the cluster is unreachable)
                    log.warning("reconciling %s failed: %s", name, e, extra={"source": name})
                    retry = self.reconciler.sources[name].interval
                if retry is not None and not self._stopping.is_set():
                    self.scheduler.add_job(
                        self.trigger,
                        DateTrigger(datetime.now(UTC) + timedelta(seconds=retry)),
                        args=[name, "retry"],
                        id=f"{name}/retry",
                        replace_existing=True,
                    )
                with self._lock:
                    if not self._pending[name]:
                        self._running.discard(name)  # in the same hold as the check: trigger() sees it
                        return
                    reasons = frozenset(self._pending[name])
                    self._pending[name].clear()
        finally:
            with self._lock:
                self._running.discard(name)
