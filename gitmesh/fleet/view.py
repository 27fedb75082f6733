"""The fleet as the controller's HTTP port shows it (``gitmesh run --fleet-view``): every member's
compliance, read from the hub on a thread of its own every REFRESH seconds, so that neither a scrape
of ``/metrics`` nor the console waits on the hub. A hub that does not answer leaves the last reading
(its members turn Unknown as their reports age) and says why.

With each reading it walks the waves: for every configuration with one, the head of its ref
(fetched from Git here) and the members' reports give the wave's next state (``wave.step``), written
to the configuration's status when it changed. One ``--fleet-view`` per hub walks them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gitmesh.errors import GitmeshError
from gitmesh.fleet import model, wave
from gitmesh.fleet.hub import Hub
from gitmesh.sync.source import Source, fetch, resolve

log = logging.getLogger("gitmesh.fleet")

REFRESH = 5.0  # seconds between readings of the hub: one list of FleetClusters each


class FleetView:
    def __init__(self, hub: Hub, interval: float = REFRESH) -> None:
        self.hub = hub
        self.interval = interval
        self.error = ""  # why the last reading failed, when it did
        self._raw: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def members(self) -> Sequence[model.Seen]:
        """Every member as seen now (Unknown read off the last report's age at this moment)."""
        with self._lock:
            raw = self._raw
        now = datetime.now(UTC)
        return [model.seen(obj, now) for obj in raw]

    def read_once(self) -> None:
        try:
            raw = self.hub.clusters()
            [model.seen(obj, datetime.now(UTC)) for obj in raw]  # one it cannot read is an error here
        except GitmeshError as e:
            log.warning("cannot read the fleet hub: %s", e)
            self.error = str(e)
            return
        with self._lock:
            self._raw, self.error = raw, ""
        try:
            self.walk_waves(raw)
        except GitmeshError as e:
            log.warning("cannot walk the fleet's waves: %s", e)
            self.error = f"waves: {e}"

    def walk_waves(self, raw: Sequence[dict[str, Any]]) -> None:
        """One step of every configuration's wave."""
        now = datetime.now(UTC)
        seen = [(model.Member.of(obj), model.seen(obj, now)) for obj in raw]
        for c in self.hub.configurations():
            if c.wave is None:
                continue
            repo = fetch(Source(name=c.name, url=c.repository, ref=c.ref), self._stopping)
            head, _ = resolve(repo, c.ref)
            reports = [
                wave.MemberReport.of(
                    s.name,
                    s.labels,
                    s.state is not model.State.UNKNOWN,
                    next((r for r in s.configurations if r.get("name") == c.name), {}),
                )
                for member, s in seen
                if c.selects(member)
            ]
            walked = wave.step(c.wave, c.wave_status, head, reports, now)
            # As far as these reports take it: a stage that passed tells the next one at once.
            for _ in range(3 * len(c.wave.stages)):
                further = wave.step(c.wave, walked, head, reports, now)
                if further == walked:
                    break
                walked = further
            if walked != c.wave_status:
                if c.wave_status is None or walked.state is not c.wave_status.state:
                    log.info("wave of %s: %s: %s", c.name, walked.state.value, walked.reason)
                self.hub.write_wave(c.name, walked.to_json())

    def _run(self) -> None:
        while True:
            self.read_once()
            if self._stopping.wait(self.interval):
                return
