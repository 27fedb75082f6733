"""The values a rollout is made of: its phase, its analysis, its persisted state. Pure data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gitmesh.plan.policy import Policy

Weights = Mapping[str, int]  # backend service -> weight, as written in the TrafficSplit
HISTORY_LIMIT = 500  # points kept per rollout for the timeline; the oldest go first


class Phase(enum.StrEnum):
    """The one set of status words for a rollout, in the store, the CLI, webhooks and the timeline."""

    PROGRESSING = "Progressing"  # walking the steps
    HOLDING = "Holding"  # the last check had too little data to pass or fail
    SUCCEEDED = "Succeeded"  # the target weights are in place
    FAILED = "Failed"  # checks failed or the deadline passed: back on the stable weights
    ABORTED = "Aborted"  # stopped by hand: back on the stable weights

    @property
    def active(self) -> bool:
        return self in (Phase.PROGRESSING, Phase.HOLDING)


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"  # too little data: neither a pass nor a failure


@dataclass(frozen=True)
class Sample:
    """What one backend served in an analysis window."""

    requests: float
    errors: float  # 5xx
    p99_ms: float | None = None

    @property
    def success_rate(self) -> float | None:
        return 100.0 * (1 - self.errors / self.requests) if self.requests > 0 else None


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    reasons: tuple[str, ...]
    values: Mapping[str, Mapping[str, float | None]]  # backend -> requests, success_rate, p99_ms
    at: float


@dataclass(frozen=True)
class Point:
    """One moment of a rollout's history, for the timeline."""

    at: float
    phase: Phase
    weights: Weights
    success_rate: Mapping[str, float | None] = field(default_factory=dict)  # analysed backend -> percent


@dataclass(frozen=True)
class Rollout:
    """A split on its way from ``stable`` to ``target`` through ``steps``.

    ``weights`` is what the split should carry now: a step while active, the target once
    Succeeded, ``stable`` once Failed or Aborted. ``mark`` is the metrics source's reading at the
    last check (counters to take the next window's deltas from).
    """

    split: str  # namespace/name
    source: str
    revision: str
    policy: Policy
    stable: Weights
    target: Weights
    steps: tuple[Weights, ...]
    step: int
    phase: Phase
    weights: Weights
    reason: str
    started_at: float
    step_started_at: float
    next_check_at: float
    failures: int = 0
    analysis: Analysis | None = None
    mark: Mapping[str, Any] | None = None
    history: tuple[Point, ...] = ()

    def record(self, at: float, success_rate: Mapping[str, float | None] | None = None) -> Rollout:
        point = Point(at, self.phase, dict(self.weights), dict(success_rate or {}))
        return replace(self, history=(*self.history, point)[-HISTORY_LIMIT:])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy"] = self.policy.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        a = data.get("analysis")
        return cls(
            **{
                **data,
                "policy": Policy.from_json(data["policy"]),
                "steps": tuple(data["steps"]),
                "phase": Phase(data["phase"]),
                "analysis": Analysis(Verdict(a["verdict"]), tuple(a["reasons"]), a["values"], a["at"])
                if a
                else None,
                "history": tuple(
                    Point(p["at"], Phase(p["phase"]), p["weights"], p["success_rate"])
                    for p in data["history"]
                ),
            }
        )
