"""Where analysis gets its numbers: a small interface over the metrics model (``gitmesh.metrics``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Sample


@dataclass(frozen=True)
class Measurement:
    samples: Mapping[str, Sample]  # backend (namespace/service) -> what it served in the window
    mark: Mapping[str, Any]  # the reading to measure the next window from; {} from a source keeping history


class MetricsSource(Protocol):
    def measure(
        self, backends: Sequence[str], policy: Policy, window: float, mark: Mapping[str, Any] | None
    ) -> Measurement:
        """What each backend served over the last ``window`` seconds (since ``mark``, if given)."""
