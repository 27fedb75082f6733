"""A member's agent: ``gitmesh run --fleet-hub`` reads its assignment from the hub, runs it as
sources through the controller, and reports each source's compliance to the hub.

The hub only says what to follow; Git, validation, plans and applies stay in the member. While the
hub is unreachable the controller goes on with the sources it has (and Git failing leaves the last
good revision applied), and reports resume when the hub answers. The assignment is read when the
agent starts; a changed one stops the agent so that it starts again on the new one (a Deployment
restarts it), as a changed configuration file rolls the controller's pods. The one change made in
place is a wave moving the member's commit: the controller is told the source's new ref.

For a configuration rolled out in waves, the agent also measures its member's mesh health (every
backend of the configuration's splits, from the sidecars or Prometheus as rollouts do) and reports
the verdict, and since when it has passed, at the revision applied.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gitmesh.errors import GitmeshError
from gitmesh.fleet import model
from gitmesh.fleet.hub import Hub
from gitmesh.kube import errors
from gitmesh.rollout.analysis import analyse
from gitmesh.rollout.metrics import MetricsSource
from gitmesh.settings import Settings
from gitmesh.sync.source import Source

log = logging.getLogger("gitmesh.fleet")

HUB_RETRY_MAX = 30.0  # seconds between tries to read the assignment at start, at most


def assignment(hub: Hub, cluster: str) -> tuple[Source, ...]:
    """The sources this member follows, as the hub says now."""
    return model.assignment(hub.member(cluster), hub.configurations())


def first_assignment(hub: Hub, cluster: str, stopping: threading.Event) -> tuple[Source, ...] | None:
    """The assignment, tried until the hub answers (None: stopped before it did). Anything else (an
    unknown cluster, credentials the hub refuses, an object it cannot read) is raised: it needs a person."""
    wait = 1.0
    while True:
        try:
            return assignment(hub, cluster)
        except (errors.Unreachable, errors.ServerError) as e:
            log.warning("the fleet hub does not answer (%s); trying again in %.0fs", e, wait)
        if stopping.wait(wait):
            return None
        wait = min(wait * 2, HUB_RETRY_MAX)


def compliances(
    sources: tuple[Source, ...], settings: Settings, health: Mapping[str, Mapping[str, Any]] | None = None
) -> list[model.Compliance]:
    """Each source's compliance from the member's own state stores (with its mesh health, if measured)."""
    records = {r.source: r for r in settings.state.records.all()}
    suspended = settings.state.records.suspended()
    return [
        model.compliance(
            s,
            records.get(s.name),
            s.name in suspended,
            len(settings.state.inventories.get(s.name)),
            (health or {}).get(s.name) or {},
        )
        for s in sources
    ]


@dataclass
class _Measured:
    revision: str
    at: float  # monotonic time of the last measurement
    mark: Mapping[str, Any] | None
    report: dict[str, Any]
    passing_since: datetime | None = None


class HealthWatch:
    """The member's mesh health per configuration with a wave, measured once per its window at the
    revision applied: a verdict (pass, fail, hold), why, and since when it has passed."""

    def __init__(self, metrics: MetricsSource, settings: Settings) -> None:
        self.metrics = metrics
        self.settings = settings
        self._measured: dict[str, _Measured] = {}

    def check(self, configuration: model.Configuration, applied: str | None) -> dict[str, Any]:
        if configuration.wave is None or not applied:
            return {}
        policy = configuration.wave.health.policy()
        last = self._measured.get(configuration.name)
        now = time.monotonic()
        if last is not None and last.revision == applied and now - last.at < policy.interval:
            return last.report
        mark = last.mark if last is not None and last.revision == applied else None
        backends = self._backends(configuration.name)
        try:
            measured = self.metrics.measure(backends, policy, policy.interval, mark)
        except GitmeshError as e:
            report = {"revision": applied, "verdict": "hold", "reasons": [f"no metrics: {e}"]}
            self._measured[configuration.name] = _Measured(applied, now, mark, report)
            return report
        if mark is None and measured.mark:  # the first reading of counters: the window starts here
            self._measured[configuration.name] = _Measured(
                applied,
                now,
                measured.mark,
                {"revision": applied, "verdict": "hold", "reasons": ["measuring"]},
            )
            return self._measured[configuration.name].report
        verdict = analyse(measured.samples, backends, (), policy, policy.interval, time.time())
        passing = last.passing_since if last is not None and last.revision == applied else None
        passing = (passing or datetime.now(UTC)) if verdict.verdict.value == "pass" else None
        report = {"revision": applied, "verdict": verdict.verdict.value, "reasons": list(verdict.reasons)}
        if passing is not None:
            report["passingSince"] = passing.isoformat().replace("+00:00", "Z")
        self._measured[configuration.name] = _Measured(applied, now, measured.mark or None, report, passing)
        return report

    def _backends(self, source: str) -> list[str]:
        """Every backend (namespace/service) the configuration's splits send traffic to here: one at
        weight 0 gets none, so it could never show enough requests to pass."""
        splits = [ref for ref in self.settings.state.inventories.get(source) if ref.kind == "TrafficSplit"]
        live = self.settings.objects.list(splits)
        return sorted(
            {
                f"{ref.namespace}/{b['service']}"
                for ref in splits
                if ref in live
                for b in _backends_of(live[ref].obj)
                if b.get("weight") not in (0, "0")
            }
        )


def _backends_of(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((obj.get("spec") or {}).get("backends") or ())


WATCH_SECONDS = 300  # the hub ends each watch after this; the agent lists and watches again
RETRY_SECONDS = 1.0


class AssignmentWatch:
    """The FleetConfigurations as the hub has them now, and this member's FleetCluster, kept by one
    LIST then a WATCH of the configurations (listed again, with the member, when a watch ends or
    expires), so that an agent's reports cost the hub one status write each and a change to a
    configuration (a wave moving a stage) is acted on at once. ``changed`` is called on every change."""

    def __init__(self, hub: Hub, cluster: str, changed: Callable[[], None]) -> None:
        self.hub = hub
        self.cluster = cluster
        self.changed = changed
        self._member: model.Member | None = None
        self._objects: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fleet-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def current(self) -> tuple[model.Member, list[model.Configuration]] | None:
        """The member and the configurations as last seen; None before the first list."""
        with self._lock:
            member, objects = self._member, list(self._objects.values())
        if member is None:
            return None
        return member, [model.Configuration.of(obj) for obj in objects]

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                member = self.hub.member(self.cluster)
                items, version = self.hub.list_configurations()
                with self._lock:
                    self._member = member
                    self._objects = {obj["metadata"]["name"]: obj for obj in items}
                self.changed()
                for event in self.hub.watch_configurations(version, WATCH_SECONDS):
                    if self._stopping.is_set() or event.get("type") == "ERROR":  # e.g. 410 Gone: list again
                        break
                    obj = event.get("object") or {}
                    name = (obj.get("metadata") or {}).get("name")
                    if event.get("type") not in ("ADDED", "MODIFIED", "DELETED") or not name:
                        continue  # a bookmark
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._objects.pop(name, None)
                        else:
                            self._objects[name] = obj
                    self.changed()
            except GitmeshError as e:
                log.warning("watching the fleet hub: %s; trying again", e)
                self._stopping.wait(RETRY_SECONDS)


class Reporter:
    """Reports the member's compliance to the hub every ``interval`` seconds, on its own thread,
    and stops the process (``on_change``) when the hub assigns something else."""

    def __init__(
        self,
        hub: Hub,
        cluster: str,
        sources: tuple[Source, ...],
        settings: Settings,
        interval: float,
        on_change: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM),
    ) -> None:
        self.hub = hub
        self.cluster = cluster
        self.sources = sources
        self.settings = settings
        self.interval = interval
        self.on_change = on_change
        self.changed = False  # the hub assigns other sources than the ones running
        self.configurations: list[model.Configuration] = []  # as the hub last said
        self.retarget: Callable[[Source], None] | None = None  # tells the controller a source's new ref
        self.health: HealthWatch | None = None
        self.watch: AssignmentWatch | None = None  # without one, each report reads the hub
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        if self.watch:
            self.watch.stop()

    def attach(self, retarget: Callable[[Source], None], metrics: MetricsSource) -> None:
        """The running controller: where a wave's new ref goes, and the member's metrics."""
        self.retarget = retarget
        self.health = HealthWatch(metrics, self.settings)

    def _health(self) -> dict[str, dict[str, Any]]:
        if self.health is None:
            return {}
        records = {r.source: r for r in self.settings.state.records.all()}
        return {
            c.name: self.health.check(c, records[c.name].last_applied if c.name in records else None)
            for c in self.configurations
            if c.wave is not None and any(s.name == c.name for s in self.sources)
        }

    def report_once(self) -> None:
        """One report; a hub that does not answer is logged and tried again next time."""
        try:
            status = model.report(compliances(self.sources, self.settings, self._health()), datetime.now(UTC))
            self.hub.report(self.cluster, status)
            seen = self.watch.current() if self.watch else None
            member, self.configurations = seen or (self.hub.member(self.cluster), self.hub.configurations())
            now = model.assignment(member, self.configurations)
        except GitmeshError as e:
            log.warning("cannot report to the fleet hub: %s", e)
            return
        if now != self.sources and self.retarget is not None and _only_refs_differ(self.sources, now):
            for before, after in zip(self.sources, now, strict=True):
                if before != after:
                    log.info("source %s now follows %s", after.name, after.ref, extra={"source": after.name})
                    self.retarget(after)
            self.sources = now
            return
        if now != self.sources and not self.changed:
            self.changed = True
            names = ", ".join(f"{s.name} ({s.path or '/'})" for s in now) or "none"
            log.warning("the hub assigns other configurations (%s): stopping to start again on them", names)
            self.on_change()

    def wake(self) -> None:
        """Report (and look at the assignment) now rather than at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            started = time.monotonic()
            self.report_once()
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))


def _only_refs_differ(before: tuple[Source, ...], after: tuple[Source, ...]) -> bool:
    """The same sources but for their refs: a wave moved the member's commit."""
    return len(before) == len(after) and all(
        dataclasses.replace(a, ref=b.ref) == b for a, b in zip(before, after, strict=True)
    )
