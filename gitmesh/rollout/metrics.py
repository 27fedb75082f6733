"""Where analysis gets its numbers: a small interface, and the pure arithmetic its sources share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gitmesh.errors import RolloutError
from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Sample


class MetricsError(RolloutError):
    """A metrics source could not be read; the check is skipped, not failed."""


@dataclass(frozen=True)
class Measurement:
    samples: Mapping[str, Sample]  # backend (namespace/service) -> what it served in the window
    mark: Mapping[str, Any]  # the reading to measure the next window from; {} from a source keeping history


class MetricsSource(Protocol):
    def measure(
        self, backends: Sequence[str], policy: Policy, window: float, mark: Mapping[str, Any] | None
    ) -> Measurement:
        """What each backend served over the last ``window`` seconds (since ``mark``, if given)."""


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated within its
    bucket as Prometheus's histogram_quantile does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower
