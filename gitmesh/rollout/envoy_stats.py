"""The embedded metrics source: the sidecars' own Envoy stats, read into the metrics model.

The callers' sidecars carry out the split, so what every source sent each backend is exactly the
traffic that backend got. The mark is the last reading of every sidecar (plain data, kept with the
rollout's state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gitmesh.metrics import envoy, model
from gitmesh.plan.policy import Policy
from gitmesh.rollout.metrics import Measurement
from gitmesh.rollout.model import Sample


def samples(now: Mapping[str, model.Sidecar], before: Mapping[str, model.Sidecar]) -> dict[str, Sample]:
    """Per-backend samples between two readings of every sidecar."""
    return {
        backend: Sample(t.requests, t.errors, t.latency(0.99))
        for backend, t in model.per_destination(model.window(now, before)).items()
    }


class EnvoyStats:
    """Scrapes the sidecars ``sidecars()`` names (admin address -> service) at each reading."""

    def __init__(self, sidecars: Callable[[], Mapping[str, str]]) -> None:
        self.stats = envoy.EnvoyStats(sidecars)

    def measure(
        self, backends: Sequence[str], policy: Policy, window_s: float, mark: Mapping[str, Any] | None
    ) -> Measurement:
        reading = self.stats.read()
        found = samples(reading, kept(mark)) if mark is not None else {}  # no mark yet: this is one
        return Measurement({b: s for b, s in found.items() if b in backends}, reading)


def kept(mark: Mapping[str, Any]) -> dict[str, model.Sidecar]:
    """A kept mark read back (JSON gives lists for tuples); a mark kept before readings named their
    source is a bare reading."""
    return {
        admin: (kept[0], kept[1]) if isinstance(kept, list | tuple) else ("", kept)
        for admin, kept in mark.items()
    }
