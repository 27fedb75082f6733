"""The fleet as values: what the hub's objects say, what a member is assigned, and how compliant it is.

Pure: the hub's objects (plain dicts, as the API server returns them) in, frozen values out.
A member's compliance per configuration follows from the reconciler's record of that source,
the way Azure Arc names the states; ``Unknown`` is never written by an agent, only read off a
last report older than the cluster's ``unknownAfter``.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gitmesh import durations
from gitmesh.controller import conditions
from gitmesh.errors import ConfigError
from gitmesh.fleet.wave import Wave, WaveStatus
from gitmesh.state.records import ObjectResult, SourceRecord
from gitmesh.sync.source import Ref, RefKind, Source

GROUP = "gitmesh.dev"
VERSION = "v1alpha1"
NAMESPACE = "gitmesh-fleet"  # the hub's namespace for clusters, configurations and agents
DEFAULT_UNKNOWN_AFTER = "2m"


class State(enum.Enum):
    COMPLIANT = "Compliant"
    NON_COMPLIANT = "Non-Compliant"
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


# A cluster's overall state is its worst configuration's.
_WORST_FIRST = (State.NON_COMPLIANT, State.PENDING, State.SUSPENDED, State.COMPLIANT)


@dataclass(frozen=True)
class Member:
    """A FleetCluster: a member cluster, its labels, and when its silence makes it Unknown."""

    name: str
    labels: Mapping[str, str]
    unknown_after: float  # seconds without a report

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Member:
        spec = obj.get("spec") or {}
        with _reading("FleetCluster", obj):
            return cls(
                obj["metadata"]["name"],
                dict(spec.get("labels") or {}),
                durations.seconds(spec.get("unknownAfter") or DEFAULT_UNKNOWN_AFTER),
            )


@dataclass(frozen=True)
class Overlay:
    """A directory that replaces the configuration's path for the clusters it names or selects."""

    path: str
    clusters: tuple[str, ...] = ()
    match_labels: Mapping[str, str] = field(default_factory=dict)

    def applies_to(self, member: Member) -> bool:
        if self.clusters:
            return member.name in self.clusters
        return _matches(self.match_labels, member.labels)


@dataclass(frozen=True)
class Configuration:
    """A FleetConfiguration: one repository, ref and path, for the clusters its selector matches."""

    name: str
    repository: str
    ref: Ref
    path: str
    namespace: str
    interval: float
    match_labels: Mapping[str, str]
    overlays: tuple[Overlay, ...]
    wave: Wave | None = None  # roll new revisions out by stages
    wave_status: WaveStatus | None = None  # where its wave stands (None: not walked yet)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Configuration:
        with _reading("FleetConfiguration", obj):
            return cls._of(obj)

    @classmethod
    def _of(cls, obj: Mapping[str, Any]) -> Configuration:
        spec = obj["spec"]
        ref = spec.get("ref") or {}
        ((kind, value),) = (ref or {"branch": ""}).items()
        return cls(
            name=obj["metadata"]["name"],
            repository=spec["repository"],
            ref=Ref(RefKind(kind), value),
            path=spec.get("path", ""),
            namespace=spec.get("namespace", ""),
            interval=durations.seconds(spec.get("interval") or "1m"),
            match_labels=dict((spec.get("clusterSelector") or {}).get("matchLabels") or {}),
            overlays=tuple(
                Overlay(
                    o["path"],
                    tuple(o.get("clusters") or ()),
                    dict((o.get("clusterSelector") or {}).get("matchLabels") or {}),
                )
                for o in spec.get("overlays") or ()
            ),
            wave=Wave.of(spec["wave"]) if spec.get("wave") else None,
            wave_status=WaveStatus.of(status["wave"])
            if (status := obj.get("status") or {}).get("wave")
            else None,
        )

    def selects(self, member: Member) -> bool:
        return _matches(self.match_labels, member.labels)

    def source(self, member: Member) -> Source:
        """The Git source the member's agent follows for this configuration: its overlay's path (the
        first that applies), else the configuration's; with a wave under way, the commit the
        member's stage has reached."""
        overlay = next((o for o in self.overlays if o.applies_to(member)), None)
        ref = self.ref
        if self.wave and self.wave_status:
            ref = Ref(RefKind.COMMIT, self.wave_status.revision_for(self.wave.stage_of(member.labels)))
        return Source(
            name=self.name,
            url=self.repository,
            ref=ref,
            path=overlay.path if overlay else self.path,
            interval=self.interval,
            namespace=self.namespace,
        )


def assignment(member: Member, configurations: Iterable[Configuration]) -> tuple[Source, ...]:
    """The sources a member follows: one per configuration selecting it, in name order."""
    return tuple(c.source(member) for c in sorted(configurations, key=lambda c: c.name) if c.selects(member))


@dataclass(frozen=True)
class Selection:
    """The members a configuration selects, and each part of it that selects none (a misspelt label,
    a cluster that never joined): nothing is applied for those, so readers must say so."""

    configuration: str
    clusters: tuple[str, ...]
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.configuration, "clusters": list(self.clusters), "problems": list(self.problems)}


def selection(configuration: Configuration, members: Sequence[Member]) -> Selection:
    """Which members ``configuration`` selects; its selector, overlays and wave stages that reach
    none of them, each with why (the labels the fleet has instead)."""
    selected = [m for m in members if configuration.selects(m)]
    problems = []
    if not selected:
        problems.append(f"selects no cluster: {_unmatched(configuration.match_labels, members)}")
    taken = {configuration.source(m).path for m in selected}
    earlier: list[Overlay] = []
    for o in configuration.overlays:
        if o.path not in taken and selected:
            problems.append(
                f"overlay {o.path} applies to no cluster: {_unused(o, earlier, selected, members)}"
            )
        earlier.append(o)
    if configuration.wave:
        for i, stage in enumerate(configuration.wave.stages):
            if stage.match_labels and not any(configuration.wave.stage_of(m.labels) == i for m in selected):
                problems.append(
                    f"wave stage {stage.name} holds no cluster: {_unmatched(stage.match_labels, selected)}"
                )
    return Selection(configuration.name, tuple(m.name for m in selected), tuple(problems))


def _unused(
    overlay: Overlay, earlier: Sequence[Overlay], selected: Sequence[Member], members: Sequence[Member]
) -> str:
    """Why an overlay is no selected member's."""
    if overlay.clusters:
        joined = {m.name for m in members}
        missing = [c for c in overlay.clusters if c not in joined]
        if missing:
            return f"no cluster {', '.join(missing)} has joined the fleet"
        if not any(overlay.applies_to(m) for m in selected):
            return f"the configuration does not select {', '.join(overlay.clusters)}"
    elif not any(overlay.applies_to(m) for m in selected):
        return _unmatched(overlay.match_labels, selected)
    shadowing = sorted(
        {e.path for e in earlier for m in selected if overlay.applies_to(m) and e.applies_to(m)}
    )
    return f"each cluster it would apply to takes an earlier overlay ({', '.join(shadowing)})"


def _unmatched(wanted: Mapping[str, str], members: Sequence[Member]) -> str:
    """Why no member has every label of ``wanted``: the first label none has, and what they have."""
    if not members:
        return "no cluster has joined the fleet"
    for key, value in sorted(wanted.items()):
        values = sorted({m.labels[key] for m in members if key in m.labels})
        if not values:
            keys = sorted({k for m in members for k in m.labels})
            return f"no cluster has label {key}" + (
                f" (the labels there are: {', '.join(keys)})" if keys else ""
            )
        if value not in values:
            return f"no cluster has {key}={value} ({key} is {' or '.join(values)} there)"
    return "no cluster has all of " + ", ".join(f"{k}={v}" for k, v in sorted(wanted.items()))


@contextlib.contextmanager
def _reading(kind: str, obj: Mapping[str, Any]) -> Iterator[None]:
    """A hub object the CRD's schema let through but gitmesh cannot read (a zero duration, two refs)
    is named, not a traceback."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as e:
        name = (obj.get("metadata") or {}).get("name", "?")
        raise ConfigError(f"{kind} {NAMESPACE}/{name} in the fleet hub cannot be read: {e}") from e


def _matches(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


@dataclass(frozen=True)
class Compliance:
    """One configuration on one member, as its agent last saw it."""

    configuration: str
    state: State
    reason: str
    path: str
    desired_revision: str | None  # the head of the configuration's ref the agent last fetched
    applied_revision: str | None  # what is applied in the member
    objects: int  # objects applied for it
    # What the last reconcile did with each object (failures first, at most OBJECTS_KEPT of them)
    results: tuple[ObjectResult, ...] = ()
    results_omitted: int = 0
    health: Mapping[str, Any] = field(default_factory=dict)  # mesh health, for a configuration in waves

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.configuration,
            "compliance": self.state.value,
            "reason": self.reason,
            "path": self.path,
            "desiredRevision": self.desired_revision or "",
            "appliedRevision": self.applied_revision or "",
            "objects": self.objects,
            "objectResults": [
                {"object": r.object, "result": r.result, **({"message": r.message} if r.message else {})}
                for r in self.results
            ],
            "objectResultsOmitted": self.results_omitted,
            **({"health": dict(self.health)} if self.health else {}),
        }


def compliance(
    source: Source,
    record: SourceRecord | None,
    suspended: bool,
    objects: int,
    health: Mapping[str, Any] | None = None,
) -> Compliance:
    """A configuration's state on a member from its source's record: Compliant once the revision
    last fetched is the one applied and Ready; Non-Compliant with Ready's message when it failed
    (invalid, refused, Git unreachable: the last good revision stays applied); Pending before the
    first result or while one is under way."""
    applied = record.last_applied if record else None
    desired = record.last_attempted if record else None

    results, omitted = (record.objects, record.objects_omitted) if record else ((), 0)

    def made(state: State, reason: str) -> Compliance:
        return Compliance(
            source.name, state, reason, source.path, desired, applied, objects, results, omitted, health or {}
        )

    if suspended:
        return made(State.SUSPENDED, "reconciles are suspended on this member")
    ready = record.condition(conditions.READY) if record else None
    if ready is None:
        return made(State.PENDING, "not reconciled yet")
    if ready.status and applied == desired:
        return made(State.COMPLIANT, ready.message)
    if ready.status:  # a newer head is being reconciled
        return made(State.PENDING, f"reconciling {desired or 'the head'}")
    return made(State.NON_COMPLIANT, ready.message)


def overall(configurations: Sequence[Compliance]) -> tuple[State, str]:
    """A member's state: its worst configuration's, with that one's reason."""
    if not configurations:
        return State.COMPLIANT, "no configuration selects this cluster"
    worst = min(configurations, key=lambda c: _WORST_FIRST.index(c.state))
    return worst.state, f"{worst.configuration}: {worst.reason}"


@dataclass(frozen=True)
class Overlap:
    """An object two configurations declare on one member: the one that applied it first keeps it,
    the other is refused it (and neither's prune deletes it while the other declares it)."""

    object: str
    applied_by: str
    refused_to: str

    def to_json(self) -> dict[str, str]:
        return {"object": self.object, "appliedBy": self.applied_by, "refusedTo": self.refused_to}


def overlaps(configurations: Sequence[Compliance]) -> list[Overlap]:
    """The objects a member's configurations both declare, from their per-object results."""
    found = []
    for c in configurations:
        for r in c.results:
            if r.result != "claimed":
                continue
            owner = next(
                (
                    o.configuration
                    for o in configurations
                    if o is not c and any(x.object == r.object for x in o.results)
                ),
                r.message.removeprefix("applied by "),  # a source of the member's own, or a result left out
            )
            found.append(Overlap(r.object, owner, c.configuration))
    return found


def report(configurations: Sequence[Compliance], now: datetime) -> dict[str, Any]:
    """The FleetCluster status an agent writes; overlapping configurations are the cluster's reason."""
    state, reason = overall(configurations)
    overlapping = overlaps(configurations)
    if overlapping:
        first = overlapping[0]
        pairs = sorted({(o.applied_by, o.refused_to) for o in overlapping})
        reason = (
            f"overlapping configurations: {', '.join(f'{a} and {b}' for a, b in pairs)} declare the same "
            f"{len(overlapping)} object(s) ({first.object}, ...); each is left as the first applied it"
        )
    return {
        "compliance": state.value,
        "reason": reason,
        "lastReportTime": now.isoformat().replace("+00:00", "Z"),
        "configurations": [c.to_json() for c in configurations],
        "overlaps": [o.to_json() for o in overlapping],
    }


@dataclass(frozen=True)
class Seen:
    """A member as a reader of the hub sees it now: the state the agent reported, or Unknown."""

    name: str
    labels: Mapping[str, str]
    state: State
    reason: str
    last_report: datetime | None
    configurations: tuple[Mapping[str, Any], ...]
    overlaps: tuple[Mapping[str, Any], ...] = ()  # as its agent last reported them


def seen(obj: Mapping[str, Any], now: datetime) -> Seen:
    """A FleetCluster read at ``now``: Unknown when its agent has not reported for longer than its
    ``unknownAfter`` (or never has)."""
    member = Member.of(obj)
    status = obj.get("status") or {}
    last = durations.instant(status.get("lastReportTime"))
    configurations = tuple(status.get("configurations") or ())
    overlapping = tuple(status.get("overlaps") or ())
    if last is None:
        return Seen(
            member.name, member.labels, State.UNKNOWN, "no report yet", None, configurations, overlapping
        )
    silent = (now - last).total_seconds()
    if silent > member.unknown_after:
        reason = f"no report for {silent:.0f}s (unknown after {member.unknown_after:g}s)"
        return Seen(member.name, member.labels, State.UNKNOWN, reason, last, configurations, overlapping)
    return Seen(
        member.name,
        member.labels,
        State(status["compliance"]),
        status.get("reason", ""),
        last,
        configurations,
        overlapping,
    )
