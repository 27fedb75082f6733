"""The rollout policy a TrafficSplit or an HTTPRoute carries in its annotations.

A split with any ``rollout.gitmesh.dev/`` annotation does not jump to new weights: gitmesh walks
it there in steps, analysing metrics between them (``gitmesh.rollout``). The policy lives on the
split itself so it travels with it into the cluster, where the rollout runner reads it, and a
change to it shows in the plan like any other field. Each key sits on its own line, so a
diagnostic points at exactly the value that is wrong.

Shape is checked by a JSON Schema (``schemas/rollout-policy.yaml``, GM140), meaning here
(GM141-GM145).
"""

from __future__ import annotations

import difflib
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from gitmesh import durations
from gitmesh.objects import Manifest
from gitmesh.plan import schema
from gitmesh.revision.diagnostics import Diagnostic, field_path

PREFIX = "rollout.gitmesh.dev/"


DEADLINE_INTERVALS = 10  # a step's progress deadline, in intervals, when the policy gives none


@dataclass(frozen=True)
class Policy:
    steps: tuple[float, ...] = (10.0, 25.0, 50.0)  # percents of the way, increasing, each < 100
    # Instead of steps when given: the gaining backends' share of all traffic at each step, in percent
    # (Flagger's stepWeights), increasing, each < 100.
    step_weights: tuple[float, ...] = ()
    interval: float = 60.0  # seconds
    success_rate: float = 99.0  # least percent
    latency_p99: float | None = None  # greatest, milliseconds
    min_requests: int = 20
    failure_threshold: int = 2
    progress_deadline: float | None = None  # seconds; None: DEADLINE_INTERVALS intervals
    baseline_margin: float | None = None
    queries: Mapping[str, str] = field(default_factory=dict)  # requests/success-rate/latency-p99 -> PromQL

    @property
    def deadline(self) -> float:
        if self.progress_deadline is not None:
            return self.progress_deadline
        return DEADLINE_INTERVALS * self.interval

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "step_weights": list(self.step_weights),
            "interval": self.interval,
            "success_rate": self.success_rate,
            "latency_p99": self.latency_p99,
            "min_requests": self.min_requests,
            "failure_threshold": self.failure_threshold,
            "progress_deadline": self.progress_deadline,
            "baseline_margin": self.baseline_margin,
            "queries": dict(self.queries),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        return cls(
            **{
                **data,
                "steps": tuple(data["steps"]),
                "step_weights": tuple(data.get("step_weights", ())),  # kept before step weights existed
                "queries": dict(data["queries"]),
            }
        )


# The defaults as DOC shows them: Policy's own.
_D = Policy()
_STEPS, _INTERVAL, _RATE = ",".join(f"{s:g}" for s in _D.steps), f"{_D.interval:g}s", f"{_D.success_rate:g}"

DOC = f"""\
A TrafficSplit with any {PREFIX}* annotation changes weights progressively. Values are strings.

  {PREFIX}steps              "10,25,50"  percents of the way from the live weights to the
                                          target, increasing, each below 100 (default {_STEPS})
  {PREFIX}step-size          "20"        instead of steps: this percent of the way per step ...
  {PREFIX}step-max           "80"        ... up to this percent (default: up to 100)
  {PREFIX}step-weights       "10,25,50"  instead of steps: the gaining backends' share of ALL traffic
                                          at each step, as Flagger's stepWeights; increasing, each
                                          below 100; those not between the live share and the target
                                          are skipped
  {PREFIX}interval           "30s"       each step holds this long, then is analysed (default {_INTERVAL})
  {PREFIX}success-rate       "99"        least % of non-5xx responses a gaining backend may show
                                          (default {_RATE})
  {PREFIX}latency-p99        "200ms"     greatest p99 latency a gaining backend may show (default: none)
  {PREFIX}min-requests       "20"        fewer requests in an interval is no data: hold
                                          (default {_D.min_requests})
  {PREFIX}failure-threshold  "2"         failed checks in one rollout before rolling back
                                          (default {_D.failure_threshold})
  {PREFIX}progress-deadline  "10m"       a step not passed this long after it began fails the rollout
                                          (default {DEADLINE_INTERVALS} intervals)
  {PREFIX}baseline-margin    "1"         also compare with the backends losing traffic: success rate at
                                          most this many points lower, p99 at most this % higher
  {PREFIX}query-requests     PromQL      override the Prometheus queries: requests served, success rate
  {PREFIX}query-success-rate PromQL      (0-1) and p99 in milliseconds over the interval, for one backend;
  {PREFIX}query-latency-p99  PromQL      $backend (namespace/service) and $interval (e.g. 30s) filled in

Backends whose share grows are analysed; the final step is the target itself. A check fails on a
threshold, holds (neither pass nor failure) with too few requests, and the rollout fails when
failure-threshold checks have failed or the progress deadline passes; weights then go back to
where the rollout started, and the same target is not tried again until a commit changes it."""


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    """The policy annotations, keyed without the prefix."""
    found = ((obj.get("metadata") or {}).get("annotations")) or {}
    return {k[len(PREFIX) :]: v for k, v in found.items() if isinstance(k, str) and k.startswith(PREFIX)}


def of(obj: Mapping[str, Any]) -> Policy | None:
    """The policy of a split that passed validation; None when it has none (its weights just apply)."""
    keys = _annotations(obj)
    if not keys:
        return None
    if "step-size" in keys:
        size, top = float(keys["step-size"]), float(keys.get("step-max", "100"))
        steps = tuple(size * i for i in range(1, int(top // size) + 1) if size * i < 100)
    elif "steps" in keys:
        steps = _numbers(keys["steps"])
    else:
        steps = Policy.steps
    given: dict[str, Any] = {"steps": steps}
    if "step-weights" in keys:
        given["step_weights"] = _numbers(keys["step-weights"])
    for key, name, read in (
        ("interval", "interval", durations.seconds),
        ("success-rate", "success_rate", float),
        ("latency-p99", "latency_p99", lambda text: durations.seconds(text) * 1000),
        ("min-requests", "min_requests", int),
        ("failure-threshold", "failure_threshold", int),
        ("progress-deadline", "progress_deadline", durations.seconds),
        ("baseline-margin", "baseline_margin", float),
    ):
        if key in keys:
            given[name] = read(keys[key])
    queries = {k[len("query-") :]: v for k, v in keys.items() if k.startswith("query-")}
    return Policy(**given, queries=queries)


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


@functools.cache
def _validator() -> Draft202012Validator:
    with (schema.SCHEMA_DIR / "rollout-policy.yaml").open("rb") as f:
        return Draft202012Validator(yaml.safe_load(f))


def check(m: Manifest) -> list[Diagnostic]:
    """Every problem with a split's rollout policy (TrafficSplit, HTTPRoute; its schema passed)."""
    keys = _annotations(m.obj)
    if not keys:
        return []
    out = []
    shaped = dict(keys)
    for error in _validator().iter_errors(keys):
        if error.validator == "additionalProperties":
            for key in sorted(set(error.instance) - set(error.schema["properties"])):
                near = difflib.get_close_matches(key, error.schema["properties"], n=1)
                hint = f"; did you mean {PREFIX + near[0]!r}?" if near else ""
                out.append(_at(m, key, "GM140", f"unknown rollout policy key {PREFIX + key!r}{hint}"))
                shaped.pop(key, None)
        else:
            key = str(error.absolute_path[0])
            out.append(_at(m, key, "GM140", f"{keys[key]!r} is not a valid {key}: expected {_EXPECTED[key]}"))
            shaped.pop(key, None)
    if "steps" in shaped:
        steps = _numbers(shaped["steps"])
        if any(not 0 < s < 100 for s in steps) or any(a >= b for a, b in itertools.pairwise(steps)):
            message = f"{shaped['steps']!r}: steps must increase, each above 0 and below 100"
            out.append(_at(m, "steps", "GM141", message))
    if "step-weights" in shaped:
        weights = _numbers(shaped["step-weights"])
        if any(not 0 < w < 100 for w in weights) or any(a >= b for a, b in itertools.pairwise(weights)):
            message = f"{shaped['step-weights']!r}: step-weights must increase, each above 0 and below 100"
            out.append(_at(m, "step-weights", "GM144", message))
    if "step-weights" in keys and ("steps" in keys or "step-size" in keys):
        other = "steps" if "steps" in keys else "step-size"
        message = f"give step-weights (shares of all traffic) or {other} (percents of the way), not both"
        out.append(_at(m, "step-weights", "GM145", message))
    if "step-size" in shaped and not 0 < float(shaped["step-size"]) < 100:
        out.append(_at(m, "step-size", "GM141", "step-size must be above 0 and below 100"))
    for key in ("interval", "latency-p99", "progress-deadline"):
        if key in shaped:
            try:
                durations.seconds(shaped[key])
            except ValueError as e:
                out.append(_at(m, key, "GM141", str(e)))
                shaped.pop(key)
    if "steps" in keys and "step-size" in keys:
        out.append(_at(m, "step-size", "GM142", "give either steps or step-size, not both"))
    if "step-max" in keys and "step-size" not in keys:
        out.append(_at(m, "step-max", "GM142", "step-max needs step-size"))
    if "interval" in shaped and "progress-deadline" in shaped:
        interval = durations.seconds(shaped["interval"])
        deadline = durations.seconds(shaped["progress-deadline"])
        if deadline < interval:
            out.append(
                _at(
                    m,
                    "progress-deadline",
                    "GM143",
                    f"progress-deadline {shaped['progress-deadline']} is shorter than the interval "
                    f"{shaped['interval']}: no step could ever be analysed",
                )
            )
    return out


_EXPECTED = {
    "steps": "comma-separated numbers",
    "step-weights": "comma-separated numbers",
    "step-size": "a number from 0 to 100",
    "step-max": "a number from 0 to 100",
    "success-rate": "a number from 0 to 100",
    "baseline-margin": "a number from 0 to 100",
    "interval": "a duration such as 500ms, 30s, 5m, 1h or 7d",
    "latency-p99": "a duration such as 500ms, 30s, 5m, 1h or 7d",
    "progress-deadline": "a duration such as 500ms, 30s, 5m, 1h or 7d",
    "min-requests": "a whole number",
    "failure-threshold": "a whole number above 0",
    "query-requests": "a PromQL query",
    "query-success-rate": "a PromQL query",
    "query-latency-p99": "a PromQL query",
}


def _at(m: Manifest, key: str, code: str, message: str) -> Diagnostic:
    path = ("metadata", "annotations", PREFIX + key)
    return Diagnostic(m.locate(path), code, message, field_path(path), m.ref)
