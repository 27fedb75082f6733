"""The rollout state machine, without I/O: (rollout, analysis, now) -> the next rollout.

The weights the split should carry are always ``rollout.weights``; the driver writes them when
they differ from the live split. Time is passed in (wall-clock seconds) so state survives a restart.
"""

from __future__ import annotations

from dataclasses import replace

from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Analysis, Phase, Rollout, Verdict, Weights
from gitmesh.rollout.steps import plan_steps


def start(
    split: str, source: str, revision: str, policy: Policy, live: Weights, target: Weights, now: float
) -> Rollout:
    """A rollout from the live weights toward ``target``: the first step is in effect at once."""
    steps = plan_steps(live, target, policy)
    r = Rollout(
        split=split,
        source=source,
        revision=revision,
        policy=policy,
        stable=dict(live),
        target=dict(target),
        steps=steps,
        step=0,
        phase=Phase.PROGRESSING,
        weights=steps[0] if steps else dict(target),
        reason=f"step 1 of {len(steps)}" if steps else "no intermediate step: the target at once",
        started_at=now,
        step_started_at=now,
        next_check_at=now + policy.interval,
    )
    if not steps:
        r = replace(r, phase=Phase.SUCCEEDED)
    return r.record(now)


def due(r: Rollout, now: float) -> bool:
    return r.phase.active and now >= r.next_check_at


def advance(r: Rollout, analysis: Analysis, now: float) -> Rollout:
    """Take a due check's analysis: next step (or the target), another interval, or roll back."""
    if not r.phase.active:
        raise ValueError(f"rollout of {r.split} is {r.phase}; nothing to advance")
    nxt = replace(r, analysis=analysis, next_check_at=now + r.policy.interval)
    rates = {b: v.get("success_rate") for b, v in analysis.values.items()}
    if analysis.verdict is Verdict.PASS:
        if r.step + 1 < len(r.steps):
            nxt = replace(
                nxt,
                phase=Phase.PROGRESSING,
                step=r.step + 1,
                weights=r.steps[r.step + 1],
                step_started_at=now,
                reason=f"step {r.step + 2} of {len(r.steps)}",
            )
        else:
            nxt = replace(
                nxt,
                phase=Phase.SUCCEEDED,
                weights=r.target,
                reason="every step passed: the target is in place",
            )
        return nxt.record(now, rates)
    if analysis.verdict is Verdict.FAIL:
        failures = r.failures + 1
        nxt = replace(nxt, failures=failures, phase=Phase.PROGRESSING, reason="; ".join(analysis.reasons))
        if failures >= r.policy.failure_threshold:
            nxt = _roll_back(nxt, Phase.FAILED, f"{failures} failed check(s): {'; '.join(analysis.reasons)}")
        return nxt.record(now, rates)
    nxt = replace(nxt, phase=Phase.HOLDING, reason="; ".join(analysis.reasons))
    if now - r.step_started_at >= r.policy.deadline:
        nxt = _roll_back(
            nxt,
            Phase.FAILED,
            f"step {r.step + 1} did not pass within the progress deadline of {r.policy.deadline:g}s: "
            + "; ".join(analysis.reasons),
        )
    return nxt.record(now, rates)


def promote(r: Rollout, now: float) -> Rollout:
    """By hand: the target now, whatever the checks say."""
    if not r.phase.active:
        raise ValueError(f"rollout of {r.split} is {r.phase}; only a rollout under way can be promoted")
    return replace(r, phase=Phase.SUCCEEDED, weights=r.target, reason="promoted by hand").record(now)


def abort(r: Rollout, now: float) -> Rollout:
    """By hand: back to the stable weights; the target is not tried again until a commit changes it."""
    if not r.phase.active:
        raise ValueError(f"rollout of {r.split} is {r.phase}; only a rollout under way can be aborted")
    return _roll_back(r, Phase.ABORTED, "aborted by hand").record(now)


def retry(r: Rollout, now: float) -> Rollout:
    """By hand: a failed or aborted target again, from the stable weights, with a clean slate."""
    if r.phase not in (Phase.FAILED, Phase.ABORTED):
        raise ValueError(
            f"rollout of {r.split} is {r.phase}; only a failed or aborted rollout can be retried"
        )
    fresh = start(r.split, r.source, r.revision, r.policy, r.stable, r.target, now)
    return replace(fresh, history=(*r.history, *fresh.history))


def retarget(
    r: Rollout, revision: str, policy: Policy, live: Weights, target: Weights, now: float
) -> Rollout:
    """A new commit's target while a rollout runs: restart from the live weights toward it."""
    fresh = start(r.split, r.source, revision, policy, live, target, now)
    return replace(fresh, history=(*r.history, *fresh.history))


def revise(r: Rollout, policy: Policy) -> Rollout:
    """A commit changed the policy, not the target: thresholds, interval and deadline apply from the
    next check; the steps stay those planned at the start."""
    return replace(r, policy=replace(policy, steps=r.policy.steps))


def abandon(r: Rollout, reason: str, now: float) -> Rollout:
    """The split went away or gave up its policy: the rollout ends, its weights no longer its to write."""
    return replace(r, phase=Phase.ABORTED, reason=reason).record(now)


def _roll_back(r: Rollout, phase: Phase, reason: str) -> Rollout:
    return replace(r, phase=phase, weights=r.stable, reason=reason)
