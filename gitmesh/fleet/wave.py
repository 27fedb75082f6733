"""Waves: a configuration's new revision rolled out stage by stage, each gated on the stage before it
being Compliant and healthy by its members' own mesh metrics.

Pure: ``step`` takes the wave as declared (``spec.wave``), the wave as it stands (the
FleetConfiguration's ``status.wave``), the branch head and what the members last reported, and
returns the wave's next state. Stages never move members themselves: each stage names the revision
its members apply (``StageStatus.revision``), which their agents follow as a pinned commit
(``model.Configuration.source``). A failing stage puts its own members back on the last good
revision and halts; the stages after it never get the new revision. A person's abort
(``spec.wave.abort``, for the revision under way) stops it the same way, at whatever stage it has
reached. A new head restarts the wave toward it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gitmesh import durations

if TYPE_CHECKING:
    from gitmesh.plan.policy import Policy


class WaveState(enum.Enum):
    PROGRESSING = "Progressing"
    WAITING_APPROVAL = "WaitingApproval"
    HALTED = "Halted"
    ABORTED = "Aborted"  # halted by a person: ``Abort``
    COMPLETED = "Completed"


class StageState(enum.Enum):
    PENDING = "Pending"  # the wave has not reached it
    WAITING_APPROVAL = "WaitingApproval"
    APPLYING = "Applying"  # its members are told the revision, not all Compliant at it yet
    VERIFYING = "Verifying"  # Compliant; mesh health has not passed for its wait yet
    PASSED = "Passed"
    ROLLED_BACK = "RolledBack"  # failed or aborted: its members are back on the last good revision


class Gate(enum.Enum):
    """What a stage under way waits for."""

    APPROVAL = "approval"  # a person: ``gitmesh fleet wave approve``
    CLUSTERS = "clusters"  # its clusters Compliant at the revision
    ANALYSIS = "analysis"  # its clusters' mesh health to pass
    WAIT = "wait"  # mesh health to keep passing for the stage's wait


@dataclass(frozen=True)
class Stage:
    name: str
    match_labels: Mapping[str, str]  # empty: every cluster not in an earlier stage
    wait: float  # seconds mesh health must pass before the next stage starts
    approval: bool  # a person approves (``gitmesh fleet wave approve``) before it starts


@dataclass(frozen=True)
class Health:
    """What a stage's members' mesh must show, measured by each member's agent from its own sidecars
    (or its Prometheus), as rollouts measure: every backend of the configuration's splits."""

    success_rate: float = 99.0  # least percent
    latency_p99: float | None = None  # greatest, milliseconds
    min_requests: int = 20  # fewer in a window holds the verdict
    window: float = 10.0  # seconds per measurement

    def policy(self) -> Policy:
        from gitmesh.plan.policy import Policy  # its schema checks weigh on every fleet command

        return Policy(
            interval=self.window,
            success_rate=self.success_rate,
            latency_p99=self.latency_p99,
            min_requests=self.min_requests,
        )


@dataclass(frozen=True)
class Abort:
    """A person's order to stop the wave bringing ``revision`` (``gitmesh fleet wave abort``)."""

    revision: str
    by: str
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "by": self.by, "at": _timestamp(self.at)}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Abort:
        return cls(data["revision"], data.get("by", ""), _instant(data["at"]))


@dataclass(frozen=True)
class Wave:
    """``spec.wave`` of a FleetConfiguration."""

    stages: tuple[Stage, ...]
    health: Health = field(default_factory=Health)
    approvals: Mapping[str, str] = field(default_factory=dict)  # stage -> the revision approved
    abort: Abort | None = None  # for one revision: a later head walks again

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Wave:
        health = spec.get("health") or {}
        return cls(
            stages=tuple(
                Stage(
                    s["name"],
                    dict((s.get("clusterSelector") or {}).get("matchLabels") or {}),
                    durations.seconds(s["wait"]) if s.get("wait") else 0.0,
                    bool(s.get("approval", False)),
                )
                for s in spec["stages"]
            ),
            health=Health(
                float(health.get("successRate", 99.0)),
                float(health["latencyP99"]) if health.get("latencyP99") is not None else None,
                int(health.get("minRequests", 20)),
                durations.seconds(health.get("window") or "10s"),
            ),
            approvals=dict(spec.get("approvals") or {}),
            abort=Abort.of(spec["abort"]) if spec.get("abort") else None,
        )

    def stage_of(self, labels: Mapping[str, str]) -> int | None:
        """The first stage selecting a cluster with ``labels``; None: in no stage (it takes a
        revision once the whole wave has passed)."""
        return next(
            (
                i
                for i, s in enumerate(self.stages)
                if all(labels.get(k) == v for k, v in s.match_labels.items())
            ),
            None,
        )


@dataclass(frozen=True)
class StageStatus:
    name: str
    revision: str  # what its members apply now
    state: StageState
    reason: str
    since: datetime  # when it entered this state
    started: datetime | None = None  # when the wave told its clusters the revision
    finished: datetime | None = None  # when it passed or went back
    waiting_for: Gate | None = None


@dataclass(frozen=True)
class WaveStatus:
    """``status.wave`` of a FleetConfiguration, written by the wave walker alone."""

    revision: str  # the revision the wave brings
    last_good: str  # the last revision a whole wave brought (where a failed stage goes back to)
    state: WaveState
    reason: str
    stages: tuple[StageStatus, ...]
    abort: Abort | None = None  # what aborted it (state Aborted)

    def revision_for(self, stage: int | None) -> str:
        """What a member of ``stage`` applies."""
        if stage is None or stage >= len(self.stages):
            return self.last_good
        return self.stages[stage].revision

    def to_json(self) -> dict[str, Any]:
        """As the hub stores it: what is not known is left out (so that the walker's apply drops it)."""
        stages = []
        for s in self.stages:
            stage: dict[str, Any] = {
                "name": s.name,
                "revision": s.revision,
                "state": s.state.value,
                "reason": s.reason,
                "since": _timestamp(s.since),
            }
            if s.started is not None:
                stage["started"] = _timestamp(s.started)
            if s.finished is not None:
                stage["finished"] = _timestamp(s.finished)
            if s.waiting_for is not None:
                stage["waitingFor"] = s.waiting_for.value
            stages.append(stage)
        return {
            "revision": self.revision,
            "lastGood": self.last_good,
            "state": self.state.value,
            "reason": self.reason,
            "stages": stages,
            **({"abort": self.abort.to_json()} if self.abort else {}),
        }

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> WaveStatus:
        return cls(
            data["revision"],
            data["lastGood"],
            WaveState(data["state"]),
            data.get("reason", ""),
            tuple(
                StageStatus(
                    s["name"],
                    s["revision"],
                    StageState(s["state"]),
                    s.get("reason", ""),
                    _instant(s["since"]),
                    _instant(s["started"]) if s.get("started") else None,
                    _instant(s["finished"]) if s.get("finished") else None,
                    Gate(s["waitingFor"]) if s.get("waitingFor") else None,
                )
                for s in data.get("stages") or ()
            ),
            Abort.of(data["abort"]) if data.get("abort") else None,
        )


def _timestamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _instant(value: str) -> datetime:
    found = durations.instant(value)
    if found is None:
        raise ValueError(f"{value!r} is no time")
    return found


@dataclass(frozen=True)
class MemberReport:
    """What one member last said of this configuration, as the walker needs it."""

    name: str
    labels: Mapping[str, str]
    reachable: bool  # False: Unknown (its agent is silent)
    compliance: str  # its configuration's state as reported
    reason: str
    desired: str  # the revision its agent was last told
    applied: str
    health_revision: str  # the revision its health was measured at
    verdict: str  # pass | fail | hold | "" (not measured)
    health_reasons: tuple[str, ...]
    passing_since: datetime | None  # health has passed at health_revision since then

    @classmethod
    def of(
        cls, name: str, labels: Mapping[str, str], reachable: bool, reported: Mapping[str, Any]
    ) -> MemberReport:
        health = reported.get("health") or {}
        return cls(
            name,
            labels,
            reachable,
            reported.get("compliance", ""),
            reported.get("reason", ""),
            reported.get("desiredRevision", ""),
            reported.get("appliedRevision", ""),
            health.get("revision", ""),
            health.get("verdict", ""),
            tuple(health.get("reasons") or ()),
            durations.instant(health.get("passingSince")),
        )


def start(wave: Wave, head: str, now: datetime) -> WaveStatus:
    """The first status: no wave to walk yet, every stage at the head (the first rollout goes to all)."""
    stages = tuple(
        StageStatus(s.name, head, StageState.PASSED, "the first revision", now, now, now) for s in wave.stages
    )
    return WaveStatus(head, head, WaveState.COMPLETED, "the first revision goes to every cluster", stages)


def step(
    wave: Wave, status: WaveStatus | None, head: str, members: Sequence[MemberReport], now: datetime
) -> WaveStatus:
    """The wave's next state."""
    if status is None:
        return start(wave, head, now)
    if [s.name for s in status.stages] != [s.name for s in wave.stages]:
        # Its stages changed: every stage is where the last good revision is, and the wave walks again.
        status = _toward(replace(status, stages=_fresh(wave, status.last_good, now)), head)
    if head != status.revision:
        status = _toward(status, head)
    if status.state in (WaveState.HALTED, WaveState.ABORTED, WaveState.COMPLETED):
        return status
    index = next((i for i, s in enumerate(status.stages) if s.state is not StageState.PASSED), None)
    if index is None:
        return replace(
            status, last_good=status.revision, state=WaveState.COMPLETED, reason="every stage passed"
        )
    return _stage(wave, status, index, members, now)


def _fresh(wave: Wave, revision: str, now: datetime) -> tuple[StageStatus, ...]:
    return tuple(StageStatus(s.name, revision, StageState.PENDING, "", now) for s in wave.stages)


def _toward(status: WaveStatus, head: str) -> WaveStatus:
    """A new head: the wave starts again toward it, from the first stage. Each stage keeps the
    revision it has until the wave reaches it."""
    stages = tuple(
        StageStatus(
            s.name, s.revision, StageState.PENDING, f"waiting for the wave toward {head[:12]}", s.since
        )
        for s in status.stages
    )
    return WaveStatus(head, status.last_good, WaveState.PROGRESSING, f"rolling out {head[:12]}", stages)


def _stage(
    wave: Wave, status: WaveStatus, index: int, members: Sequence[MemberReport], now: datetime
) -> WaveStatus:
    stage, current = wave.stages[index], status.stages[index]
    revision = status.revision

    def moved(
        state: StageState,
        reason: str,
        to: str = revision,
        wave_state: WaveState = WaveState.PROGRESSING,
        wave_reason: str = "",
        waiting_for: Gate | None = None,
    ) -> WaveStatus:
        since = current.since if (state, to) == (current.state, current.revision) else now
        told = state not in (StageState.PENDING, StageState.WAITING_APPROVAL)
        started = current.started or (now if told else None)
        done = state in (StageState.PASSED, StageState.ROLLED_BACK)
        finished = (current.finished or now) if done else None
        stages = list(status.stages)
        stages[index] = StageStatus(stage.name, to, state, reason, since, started, finished, waiting_for)
        said = wave_reason or f"stage {stage.name}: {state.value}: {reason}"
        return replace(status, stages=tuple(stages), state=wave_state, reason=said)

    def halted(why: str, wave_state: WaveState, wave_reason: str) -> WaveStatus:
        """The stage goes back to the last good revision (once the wave has told its clusters the
        revision; before, it stays as it is) and the wave stops: later stages never get the revision."""
        if current.revision != revision:
            return moved(
                StageState.PENDING, why, to=current.revision, wave_state=wave_state, wave_reason=wave_reason
            )
        back = status.last_good
        return moved(
            StageState.ROLLED_BACK,
            f"{why}; its clusters go back to {back[:12]}",
            to=back,
            wave_state=wave_state,
            wave_reason=wave_reason,
        )

    abort = wave.abort
    if abort is not None and abort.revision == revision:
        at = _timestamp(abort.at)
        return replace(
            halted(
                f"aborted by {abort.by}",
                WaveState.ABORTED,
                f"aborted at stage {stage.name} by {abort.by} at {at}; later stages untouched",
            ),
            abort=abort,
        )
    if current.revision != revision:
        if stage.approval and wave.approvals.get(stage.name) != revision:
            return moved(
                StageState.WAITING_APPROVAL,
                f"approve {revision[:12]} for it: gitmesh fleet wave approve CONFIGURATION {stage.name}",
                to=current.revision,
                wave_state=WaveState.WAITING_APPROVAL,
                waiting_for=Gate.APPROVAL,
            )
        return moved(StageState.APPLYING, f"its clusters are told {revision[:12]}", waiting_for=Gate.CLUSTERS)
    mine = [m for m in members if wave.stage_of(m.labels) == index]
    if not mine:
        return moved(StageState.PASSED, "no cluster in this stage")
    failed = [
        f"{m.name}: {m.reason}" for m in mine if m.desired == revision and m.compliance == "Non-Compliant"
    ] + [
        f"{m.name}: mesh health failed: {'; '.join(m.health_reasons)}"
        for m in mine
        if m.health_revision == revision and m.verdict == "fail"
    ]
    if failed:
        return halted(
            "; ".join(failed),
            WaveState.HALTED,
            f"halted at stage {stage.name}: {failed[0]}; later stages untouched",
        )
    behind = [
        m.name for m in mine if not (m.reachable and m.compliance == "Compliant" and m.applied == revision)
    ]
    if behind:
        return moved(
            StageState.APPLYING,
            f"{len(mine) - len(behind)} of {len(mine)} Compliant at {revision[:12]} "
            f"(not: {', '.join(behind)})",
            waiting_for=Gate.CLUSTERS,
        )
    unproven = [
        f"{m.name}: {'; '.join(m.health_reasons) or 'not measured yet'}"
        for m in mine
        if m.health_revision != revision or m.verdict != "pass" or m.passing_since is None
    ]
    if unproven:
        return moved(
            StageState.VERIFYING, f"mesh health not passing yet: {unproven[0]}", waiting_for=Gate.ANALYSIS
        )
    waiting = [
        m
        for m in mine
        if m.passing_since is not None and (now - m.passing_since).total_seconds() < stage.wait
    ]
    if waiting:
        return moved(
            StageState.VERIFYING, f"mesh health passing; waiting {stage.wait:g}s of it", waiting_for=Gate.WAIT
        )
    passed = moved(StageState.PASSED, f"Compliant and healthy for {stage.wait:g}s")
    if index + 1 == len(wave.stages):
        return replace(
            passed, last_good=revision, state=WaveState.COMPLETED, reason=f"{revision[:12]} everywhere"
        )
    return passed
