"""What the controller keeps per source: conditions and the last reconciles.

Plain values with one JSON form, so the embedded store and the cluster store them alike
(a row, a ConfigMap) and ``gitmesh status`` / ``gitmesh history`` read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

HISTORY_LENGTH = 20
# Per-object results kept of the last reconcile, failures first: a record (and a fleet member's
# report) stays small however many objects a source has; the rest are counted.
OBJECTS_KEPT = 100
MESSAGE_KEPT = 300  # characters of one object's message


@dataclass(frozen=True)
class Condition:
    """One Flux-style condition: ``Ready``, ``Reconciling`` or ``Stalled``."""

    type: str
    status: bool
    reason: str
    message: str
    since: datetime  # when ``status`` last changed


@dataclass(frozen=True)
class Reconcile:
    """One reconcile of a revision: what the plan said and how it ended."""

    revision: str
    ref: str
    started_at: datetime
    duration: float  # seconds
    result: str  # applied | unchanged | invalid | unverified | refused | failed
    summary: str  # the plan's one-line summary, or the error
    trigger: str  # what started it: start, interval, webhook, manual, drift, retry


@dataclass(frozen=True)
class ObjectResult:
    """What the last reconcile did with one object."""

    object: str  # Kind/namespace/name
    result: str  # created | updated | deleted | unchanged | invalid | refused | claimed
    message: str = ""  # why, for the ones that failed

    @property
    def failed(self) -> bool:
        return self.result in ("invalid", "refused", "claimed")


def kept_objects(results: list[ObjectResult]) -> tuple[tuple[ObjectResult, ...], int]:
    """The results a record keeps (failures first, then by object) and how many it leaves out."""
    ordered = sorted(results, key=lambda r: (not r.failed, r.object, r.result))
    kept = tuple(ObjectResult(r.object, r.result, r.message[:MESSAGE_KEPT]) for r in ordered[:OBJECTS_KEPT])
    return kept, max(0, len(ordered) - OBJECTS_KEPT)


@dataclass(frozen=True)
class SourceRecord:
    source: str
    conditions: tuple[Condition, ...] = ()
    last_applied: str | None = None
    last_attempted: str | None = None
    history: tuple[Reconcile, ...] = ()  # newest first, at most HISTORY_LENGTH
    objects: tuple[ObjectResult, ...] = ()  # of the last reconcile that got as far as objects
    objects_omitted: int = 0  # results past OBJECTS_KEPT, left out

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "conditions": [
                {
                    "type": c.type,
                    "status": "True" if c.status else "False",
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": c.since.isoformat(),
                }
                for c in self.conditions
            ],
            "lastAppliedRevision": self.last_applied,
            "lastAttemptedRevision": self.last_attempted,
            "history": [
                {
                    "revision": r.revision,
                    "ref": r.ref,
                    "startedAt": r.started_at.isoformat(),
                    "duration": round(r.duration, 3),
                    "result": r.result,
                    "summary": r.summary,
                    "trigger": r.trigger,
                }
                for r in self.history
            ],
            "objects": [{"object": o.object, "result": o.result, "message": o.message} for o in self.objects],
            "objectsOmitted": self.objects_omitted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceRecord:
        return cls(
            source=data["source"],
            conditions=tuple(
                Condition(
                    c["type"],
                    c["status"] == "True",
                    c["reason"],
                    c["message"],
                    datetime.fromisoformat(c["lastTransitionTime"]),
                )
                for c in data.get("conditions", ())
            ),
            last_applied=data.get("lastAppliedRevision"),
            last_attempted=data.get("lastAttemptedRevision"),
            history=tuple(
                Reconcile(
                    r["revision"],
                    r["ref"],
                    datetime.fromisoformat(r["startedAt"]),
                    float(r["duration"]),
                    r["result"],
                    r["summary"],
                    r["trigger"],
                )
                for r in data.get("history", ())
            ),
            objects=tuple(
                ObjectResult(o["object"], o["result"], o.get("message", "")) for o in data.get("objects", ())
            ),
            objects_omitted=int(data.get("objectsOmitted", 0)),
        )
