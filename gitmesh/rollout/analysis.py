"""Judge one analysis window: metric samples per backend -> pass, fail, or hold for want of data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Analysis, Sample, Verdict

_NONE = Sample(0.0, 0.0)


def analyse(
    samples: Mapping[str, Sample],
    gaining: Sequence[str],
    losing: Sequence[str],
    policy: Policy,
    window: float,
    at: float,
) -> Analysis:
    """Every gaining backend must meet the thresholds (and, with a baseline margin, stay close to
    the losing backends). A failure anywhere fails the check; otherwise too little data holds it."""
    fails: list[str] = []
    holds: list[str] = []
    passes: list[str] = []
    base = _combined([samples.get(b, _NONE) for b in losing])
    for name in gaining:
        s = samples.get(name, _NONE)
        rate = s.success_rate
        if s.requests < policy.min_requests or rate is None:
            holds.append(
                f"{name}: {s.requests:g} requests in {window:g}s, "
                f"fewer than min-requests {policy.min_requests}"
            )
            continue
        said = f"{name}: success rate {rate:.1f}%"
        if rate < policy.success_rate:
            fails.append(f"{said} is below {policy.success_rate:g}% ({s.errors:g} of {s.requests:g} failed)")
        if policy.latency_p99 is not None:
            if s.p99_ms is None:
                holds.append(f"{name}: no latency data yet")
            elif s.p99_ms > policy.latency_p99:
                fails.append(f"{name}: p99 latency {s.p99_ms:.0f} ms is above {policy.latency_p99:g} ms")
        if policy.baseline_margin is not None:
            fails += _against_baseline(name, s, base, policy)
        passes.append(f"{said}, p99 {_ms(s.p99_ms)} over {s.requests:g} requests")
    values = {
        name: {"requests": s.requests, "success_rate": s.success_rate, "p99_ms": s.p99_ms}
        for name in (*gaining, *losing)
        for s in [samples.get(name, _NONE)]
    }
    if fails:
        return Analysis(Verdict.FAIL, tuple(fails), values, at)
    if holds:
        return Analysis(Verdict.HOLD, tuple(holds), values, at)
    return Analysis(Verdict.PASS, tuple(passes), values, at)


def _against_baseline(name: str, s: Sample, base: Sample, policy: Policy) -> list[str]:
    margin = policy.baseline_margin or 0.0
    rate, base_rate = s.success_rate, base.success_rate
    if base.requests < policy.min_requests or rate is None or base_rate is None:
        return []  # nothing to compare with: the absolute thresholds still apply
    out = []
    if rate < base_rate - margin:
        out.append(
            f"{name}: success rate {rate:.1f}% is more than {margin:g} points below the baseline's "
            f"{base_rate:.1f}%"
        )
    if s.p99_ms is not None and base.p99_ms is not None and s.p99_ms > base.p99_ms * (1 + margin / 100):
        out.append(
            f"{name}: p99 latency {s.p99_ms:.0f} ms is more than {margin:g}% above the baseline's "
            f"{base.p99_ms:.0f} ms"
        )
    return out


def _combined(samples: Sequence[Sample]) -> Sample:
    """The losing backends as one: requests and errors add up, the worst p99 stands for them."""
    p99s = [s.p99_ms for s in samples if s.p99_ms is not None]
    return Sample(sum(s.requests for s in samples), sum(s.errors for s in samples), max(p99s, default=None))


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "unknown"
