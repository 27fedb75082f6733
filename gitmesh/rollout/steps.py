"""Where a split goes on its way to a target: the weights of each step, and who is on trial."""

from __future__ import annotations

from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Weights

TOTAL = 100  # intermediate steps are written as integer percents


def shares(weights: Weights) -> dict[str, float]:
    """Each backend's percent of the traffic; weights are relative."""
    total = sum(weights.values())
    return {b: 100.0 * w / total if total else 0.0 for b, w in weights.items()}


def same_shares(a: Weights, b: Weights) -> bool:
    sa, sb = shares(a), shares(b)
    return all(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) < 1e-9 for k in sa.keys() | sb.keys())


def plan_steps(live: Weights, target: Weights, policy: Policy) -> tuple[dict[str, int], ...]:
    """The intermediate weights, each ``policy.steps`` percent of the way from ``live`` to ``target``.

    The target itself follows the last of them. A backend only one side names counts as 0 on the
    other; steps that round to the same weights (or to the start or the target) are dropped.
    """
    start, end = shares(live), shares(target)
    names = [*live, *(b for b in target if b not in live)]
    out: list[dict[str, int]] = []
    for percent in _percents_of_the_way(start, end, policy):
        exact = {b: start.get(b, 0.0) + (end.get(b, 0.0) - start.get(b, 0.0)) * percent / 100 for b in names}
        step = _rounded(exact)
        if not same_shares(step, out[-1] if out else live) and not same_shares(step, target):
            out.append(step)
    return tuple(out)


def _percents_of_the_way(start: dict[str, float], end: dict[str, float], policy: Policy) -> tuple[float, ...]:
    """The policy's steps; step weights (shares of all traffic that the gaining backends reach) turned
    into percents of the way, those not strictly between the live and the target share dropped."""
    if not policy.step_weights:
        return policy.steps
    gain = [b for b in end if end[b] > start.get(b, 0.0)]
    before, after = sum(start.get(b, 0.0) for b in gain), sum(end[b] for b in gain)
    return tuple((w - before) * 100 / (after - before) for w in policy.step_weights if before < w < after)


def _rounded(exact: dict[str, float]) -> dict[str, int]:
    """Integer percents summing to 100 (largest remainder), in the order given."""
    floors = {b: int(v) for b, v in exact.items()}
    short = TOTAL - sum(floors.values())
    for b in sorted(exact, key=lambda b: exact[b] - floors[b], reverse=True)[:short]:
        floors[b] += 1
    return floors


def gaining(stable: Weights, target: Weights) -> list[str]:
    """The backends the shift gives traffic to: they are the ones analysed."""
    start, end = shares(stable), shares(target)
    return [b for b in end if end[b] > start.get(b, 0.0)]


def losing(stable: Weights, target: Weights) -> list[str]:
    """The backends the shift takes traffic from: the baseline to compare with."""
    start, end = shares(stable), shares(target)
    return [b for b in start if start[b] > end.get(b, 0.0)]
