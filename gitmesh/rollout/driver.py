"""The rollout's I/O: where it plugs into applying a plan, and the runner that walks the steps.

The seam for whatever applies plans (``gitmesh plan`` and ``apply``, the reconciler)::

    plan = driver.prepare(plan, settings, now)   # the plan to apply, each rollout's next state in it
    pipeline.apply(plan, settings)               # objects, inventory and rollout state together
    driver.begin(plan, notify)                   # announces the rollouts it started

and ``Runner.tick()``, called every second or so, analyses what is due and writes each step's
weights to the split in the cluster, which ``gitmesh run`` serves to the sidecars. The state
lives in the rollout store, so a new runner carries on where the last one stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gitmesh.apis import gateway, smi
from gitmesh.apis.kinds import KINDS, Meaning
from gitmesh.cluster.port import Changes, Live, ObjectsFailed
from gitmesh.errors import GitmeshError, MetricsError, RolloutError
from gitmesh.objects import ObjectRef
from gitmesh.plan import policy as policies
from gitmesh.plan.diff import clean, diff_fields
from gitmesh.plan.model import Action, Change, Plan, RolloutStep
from gitmesh.rollout import machine, revert
from gitmesh.rollout.analysis import analyse
from gitmesh.rollout.metrics import Measurement, MetricsSource
from gitmesh.rollout.model import Phase, Rollout, Weights
from gitmesh.rollout.steps import gaining, losing, same_shares
from gitmesh.settings import Settings

log = logging.getLogger(__name__)

Notify = Callable[[Rollout], None]  # told of every phase change


# The kinds whose weights a rollout walks: a TrafficSplit's backends, an HTTPRoute's split rule.
SPLIT_KINDS = frozenset(k.name for k in KINDS if k.meaning is Meaning.SPLIT)


def split_key(ref: ObjectRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def weights_of(obj: Mapping[str, Any]) -> dict[str, int]:
    if obj.get("kind") != "TrafficSplit":  # a Gateway API route
        return gateway.route_weights(obj)
    return {b.service: int(b.weight) for b in smi.split_backends(dict(obj))}


def with_weights(obj: Mapping[str, Any], weights: Weights) -> dict[str, Any]:
    """A copy of a split carrying ``weights``; a backend only ``weights`` names is added."""
    if obj.get("kind") != "TrafficSplit":
        return gateway.with_route_weights(obj, weights)
    out = copy.deepcopy(dict(obj))
    backends = out["spec"]["backends"]
    for b in backends:
        b["weight"] = weights.get(b["service"], 0)
    named = {b["service"] for b in backends}
    backends += [{"service": s, "weight": w} for s, w in weights.items() if s not in named]
    return out


def load(settings: Settings) -> dict[str, Rollout]:
    return {split: Rollout.from_json(r) for split, r in settings.state.rollouts.all().items()}


def prepare(plan: Plan, settings: Settings, now: float) -> Plan:
    """The plan to apply, rollouts included: a split whose weights change under a rollout policy
    gets the first step's weights (or keeps its live ones while a rollout toward that target runs
    or has failed), and the plan carries each rollout's state to keep once it is applied."""
    rollouts = load(settings)
    inventory = settings.state.inventories.get(plan.source) if plan.changes else {}
    changes, steps = [], []
    for c in plan.changes:
        split = split_key(c.ref)
        r = rollouts.get(split)
        if c.ref.kind not in SPLIT_KINDS or c.after is None or c.before is None:
            if r is not None and r.phase.active and c.action is Action.DELETE:
                steps.append(RolloutStep(split, f"deletes the split: the rollout ({r.phase}) ends"))
            changes.append(c)
            continue
        pol = policies.of(c.after)
        live, target = weights_of(c.before), weights_of(c.after)
        if pol is None or same_shares(live, target):
            if r is not None and r.phase.active and pol is None:
                note = "removes the rollout policy: the weights apply at once and the rollout ends"
                steps.append(RolloutStep(split, note))
            changes.append(c)
            continue
        if r is not None and same_shares(r.target, target) and r.phase is not Phase.SUCCEEDED:
            weights: Weights = live
            if not r.phase.active:
                note = (
                    f"the rollout toward these weights ended {r.phase} ({r.reason}); not retried until "
                    "a commit changes them (or gitmesh rollout retry)"
                )
                steps.append(RolloutStep(split, note))
            elif (taking := machine.revise(r, pol)) != r:
                note = (
                    f"the rollout toward these weights is {r.phase}; its policy changes from the next check"
                )
                steps.append(RolloutStep(split, note, taking.to_json()))
            else:
                note = f"the rollout toward these weights is {r.phase}; they stay as they are"
                steps.append(RolloutStep(split, note))
        else:
            fresh = (
                machine.retarget(r, plan.revision or "", pol, live, target, now)
                if r is not None and r.phase.active
                else machine.start(split, plan.source, plan.revision or "", pol, live, target, now)
            )
            weights = fresh.weights
            restarted = "restarts the rollout under way from the live weights" if r and r.phase.active else ""
            note = (
                f"{restarted or 'starts a rollout'}: {len(fresh.steps)} step(s) "
                + ", ".join(_describe(s) for s in fresh.steps)
                + f", then {_describe(target)}, every {pol.interval:g}s (step 1 of {len(fresh.steps) + 1}: "
                + f"{_describe(live)} -> {_describe(weights)}, then analysis)"
            )
            steps.append(RolloutStep(split, note, fresh.to_json(), starts=True))
        changes.append(_with_weights(c, weights, c.ref in inventory))
    return replace(plan, changes=tuple(changes), rollouts=tuple(steps))


def _with_weights(c: Change, weights: Weights, owned: bool) -> Change:
    assert c.after is not None and c.manifest is not None
    after = with_weights(c.after, weights)
    fields = diff_fields(c.before, after)
    if not fields and owned:
        return Change(c.ref, Action.NOOP, location=c.location)
    return replace(c, diff=fields, after=after, manifest=with_weights(c.manifest, weights))


def begin(plan: Plan, notify: Notify) -> None:
    """The plan is applied (its rollouts' state with it): announce the rollouts it started."""
    for step in plan.rollouts:
        if step.starts and step.record is not None:
            notify(Rollout.from_json(step.record))


def _describe(weights: Weights) -> str:
    return "/".join(f"{w}" for w in weights.values())


class Runner:
    """Walks every active rollout: on each tick, analyse what is due and write the weights."""

    def __init__(
        self, settings: Settings, metrics: MetricsSource, notify: Notify, revert_to: str | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.notify = notify
        self.revert_to = revert_to  # a Git repo (path or URL) to push a revert branch to after a failure

    def tick(self, now: float) -> None:
        active = {split: r for split, r in load(self.settings).items() if r.phase.active}
        if not active:  # gitmesh run ticks every second: with nothing under way, read nothing more
            return
        for split in active:
            # One rollout at a time under the store's transaction, read again inside it: another
            # walker (gitmesh run beside gitmesh rollout run) may have moved it meanwhile, and its
            # weights must not be written back over that one's.
            with self.settings.transaction():
                r = load(self.settings).get(split)
                if r is None or not r.phase.active:
                    continue
                live = {
                    split_key(ref): obj
                    for ref, obj in self.settings.objects.list().items()
                    if ref.kind in SPLIT_KINDS
                }
                self._step(r, live.get(split), now)

    def _step(self, r: Rollout, split: Live | None, now: float) -> None:
        obj = split.obj if split is not None else None
        if obj is None or policies.of(obj) is None:
            why = "the split was deleted" if obj is None else "the split no longer has a rollout policy"
            self._save(r, machine.abandon(r, why, now))
            return
        nxt = r
        try:
            if r.mark is None:  # a new rollout: its first window starts now
                nxt = replace(r, mark=self.measure(r, now).mark)
            elif machine.due(r, now):
                m = self.measure(r, now)
                gains, losses = gaining(r.stable, r.target), losing(r.stable, r.target)
                analysis = analyse(m.samples, gains, losses, r.policy, r.policy.interval, now)
                nxt = replace(machine.advance(r, analysis, now), mark=m.mark)
        except MetricsError as e:
            log.warning("rollout of %s: %s", r.split, e)
        if load(self.settings).get(r.split) != r:
            return  # moved meanwhile (promote, abort, a new commit): that wins; look again next tick
        # Weights first, then the state: killed in between, the runner finds the old state and
        # redoes the step, rather than a finished state whose weights were never written.
        if not same_shares(weights_of(obj), nxt.weights) or set(weights_of(obj)) != set(nxt.weights):
            write(self.settings, nxt, obj)
        if nxt != r:
            self._save(r, nxt)

    def measure(self, r: Rollout, now: float) -> Measurement:
        # Samples arrive keyed namespace/service; analysis speaks of the split's backends as written
        # (a name, or a DNS name such as bookstore-v2.bookstore.svc).
        ns = r.split.partition("/")[0]
        written = {"/".join(smi.service_ref(b, ns)): b for b in r.weights}
        m = self.metrics.measure(list(written), r.policy, r.policy.interval, r.mark)
        return replace(m, samples={written[k]: s for k, s in m.samples.items()})

    def _save(self, before: Rollout, after: Rollout) -> None:
        if self.revert_to and after.phase is Phase.FAILED and before.phase.active:
            try:
                branch = revert.push_revert(self.revert_to, after)
                after = replace(after, reason=f"{after.reason}; a revert is on branch {branch}")
            except GitmeshError as e:  # the rollback itself stands; only the branch is missing
                log.warning("rollout of %s: no revert branch: %s", after.split, e)
        self.settings.state.rollouts.save(after.split, after.to_json())
        if after.phase is not before.phase:
            self.notify(after)


def write(settings: Settings, r: Rollout, obj: Mapping[str, Any]) -> None:
    """The split with the rollout's weights, applied as its source so the inventory stays true."""
    ref = ObjectRef.of(obj)
    unchanged = frozenset(k for k in settings.state.inventories.get(r.source) if k != ref)
    status = {s.source: s for s in settings.state.inventories.status()}.get(r.source)
    revision, git_ref = (status.revision, status.ref) if status else (r.revision, "")
    changes = Changes(writes=(with_weights(clean(obj), r.weights),), unchanged=unchanged)
    done = settings.write(r.source, revision, git_ref, changes)
    if done.failures:
        raise ObjectsFailed("applied", list(done.failures))
    log.info("rollout of %s: %s, weights %s", r.split, r.phase, dict(r.weights))


def act(settings: Settings, split: str, action: str, notify: Notify, now: float) -> Rollout:
    """promote, abort or retry one rollout by hand, writing its weights at once. What it reads and
    writes is one transaction where the store has them (the embedded one)."""
    with settings.transaction():
        nxt = _act(settings, split, action, now)
    notify(nxt)
    return nxt


def _act(settings: Settings, split: str, action: str, now: float) -> Rollout:
    rollouts = load(settings)
    matches = [k for k in rollouts if k == split or k.partition("/")[2] == split]
    if len(matches) != 1:
        known = ", ".join(sorted(rollouts)) or "none"
        raise RolloutError(f"no single rollout of {split!r} (rollouts: {known}); name it namespace/name")
    r = rollouts[matches[0]]
    try:
        nxt = {"promote": machine.promote, "abort": machine.abort, "retry": machine.retry}[action](r, now)
    except ValueError as e:
        raise RolloutError(str(e)) from e
    objects = settings.objects
    live = {split_key(ref): o.obj for ref, o in objects.list().items() if ref.kind in SPLIT_KINDS}
    if r.split not in live:
        raise RolloutError(f"no TrafficSplit or HTTPRoute {r.split} in {objects.describe()}")
    write(settings, nxt, live[r.split])
    settings.state.rollouts.save(nxt.split, nxt.to_json())
    return nxt


def webhook(url: str | None) -> Notify:
    """Tell ``url`` (a JSON POST) of every phase change; without one, only the log hears of it."""

    def notify(r: Rollout) -> None:
        log.info("rollout of %s is %s: %s", r.split, r.phase, r.reason)
        if not url:
            return
        body = event(r)
        request = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except (OSError, urllib.error.HTTPError) as e:
            log.warning("webhook %s: %s", url, e)  # a missed notice must not stop the rollout

    return notify


def event(r: Rollout) -> dict[str, Any]:
    """What a webhook receives."""
    return {
        "split": r.split,
        "phase": str(r.phase),
        "reason": r.reason,
        "revision": r.revision,
        "weights": dict(r.weights),
        "target": dict(r.target),
        "stable": dict(r.stable),
        "step": r.step + 1,
        "steps": len(r.steps),
        "analysis": None
        if r.analysis is None
        else {
            "verdict": str(r.analysis.verdict),
            "reasons": list(r.analysis.reasons),
            "values": r.analysis.values,
        },
    }
