"""A member's agent: ``gitmesh run --fleet-hub`` reads its assignment from the hub, runs it as
sources through the controller, and reports each source's compliance to the hub.

The hub only says what to follow; Git, validation, plans and applies stay in the member. While the
hub is unreachable the controller goes on with the sources it has (and Git failing leaves the last
good revision applied), and reports resume when the hub answers. The assignment is read when the
agent starts; a changed one stops the agent so that it starts again on the new one (a Deployment
restarts it), as a changed configuration file rolls the controller's pods.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gitmesh.errors import GitmeshError
from gitmesh.fleet import model
from gitmesh.fleet.hub import Hub
from gitmesh.kube import errors
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


def compliances(sources: tuple[Source, ...], settings: Settings) -> list[model.Compliance]:
    """Each source's compliance from the member's own state stores."""
    records = {r.source: r for r in settings.state.records.all()}
    suspended = settings.state.records.suspended()
    return [
        model.compliance(
            s, records.get(s.name), s.name in suspended, len(settings.state.inventories.get(s.name))
        )
        for s in sources
    ]


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
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def report_once(self) -> None:
        """One report; a hub that does not answer is logged and tried again next time."""
        try:
            status = model.report(compliances(self.sources, self.settings), datetime.now(UTC))
            self.hub.report(self.cluster, status)
            now = assignment(self.hub, self.cluster)
        except GitmeshError as e:
            log.warning("cannot report to the fleet hub: %s", e)
            return
        if now != self.sources and not self.changed:
            self.changed = True
            names = ", ".join(f"{s.name} ({s.path or '/'})" for s in now) or "none"
            log.warning("the hub assigns other configurations (%s): stopping to start again on them", names)
            self.on_change()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self.report_once()
            if self._stopping.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return
