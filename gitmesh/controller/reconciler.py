"""One source's reconcile: fetch -> resolve the ref -> (a new commit?) -> check -> plan -> apply -> record.

A revision that fails is never applied in part and never replaces the last good one: the
cluster keeps what it had (and the ADS server keeps serving it). What happened goes into the
source's record in the record store: conditions, the last applied and attempted revisions, and the
last reconciles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import git

from gitmesh import pipeline
from gitmesh.cluster.port import ObjectsFailed
from gitmesh.controller import conditions
from gitmesh.controller.conditions import Result
from gitmesh.controller.metrics import Metrics
from gitmesh.errors import ClusterError, GitmeshError, PlanError, SourceError, StalePlan
from gitmesh.kube.errors import ApiError
from gitmesh.objects import ObjectRef
from gitmesh.plan.model import Action, Plan
from gitmesh.rollout import driver
from gitmesh.settings import Settings
from gitmesh.state.records import HISTORY_LENGTH, ObjectResult, Reconcile, SourceRecord, kept_objects
from gitmesh.sync.git import SourceUnavailable
from gitmesh.sync.source import Source, fetch, read, resolve
from gitmesh.sync.verify import verify_commit

log = logging.getLogger("gitmesh.controller")

RETRY_BASE = 1.0  # seconds before the first retry; doubled per failure, at most the source's interval
# Triggers that reconcile even when the head has not moved: a person asked, or it is time to
# look for drift (objects changed in the cluster behind gitmesh's back).
FORCING = frozenset({"manual", "drift"})


@dataclass
class _Progress:
    """What this process knows of a source beyond its stored record."""

    record: SourceRecord
    seen: str | None = None  # the head last reconciled by this process
    failures: int = 0  # consecutive failures that are retried
    attempted: bool = False  # a first attempt has finished (for /readyz)
    declared: frozenset[ObjectRef] | None = None  # every object of the revision last read (None: none yet)


class Reconciler:
    def __init__(
        self,
        sources: Sequence[Source],
        settings: Settings,
        metrics: Metrics,
        stopping: threading.Event,
        notify: driver.Notify = lambda rollout: None,
    ) -> None:
        self.sources = {s.name: s for s in sources}
        self.metrics = metrics
        self.notify = notify  # told of every rollout phase change
        self.settings = settings
        self._stopping = stopping
        # Plans are made against everything live; two sources planning and applying at once (or the
        # rollout runner writing a step) would each find the other's writes and refuse as stale.
        # Fetching stays concurrent.
        self.apply_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _progress, which the HTTP port reads
        for name in self.sources:  # every series exists from the start, at zero
            metrics.fetches.labels(name)
            metrics.fetch_errors.labels(name)
        stored = {r.source: r for r in settings.state.records.all()}
        self._progress = {name: _Progress(stored.get(name) or SourceRecord(name)) for name in self.sources}
        for record in stored.values():
            if record.source in self.sources and record.last_applied and record.history:
                applied = next((r for r in record.history if r.revision == record.last_applied), None)
                if applied is not None:
                    self.metrics.last_applied.labels(record.source).set(applied.started_at.timestamp())

    def records(self) -> list[SourceRecord]:
        with self._lock:
            return [p.record for _, p in sorted(self._progress.items())]

    def not_ready(self) -> list[str]:
        """Sources that have not finished a first attempt yet."""
        with self._lock:
            return sorted(name for name, p in self._progress.items() if not p.attempted)

    def reconcile(self, name: str, triggers: frozenset[str]) -> float | None:
        """Bring the cluster in step with the source's head. Returns the seconds after which to try
        again when the attempt failed in a way a retry may mend, else None."""
        source = self.sources[name]
        settings = self.settings
        if name in settings.state.records.suspended():
            self.metrics.suspended_runs.labels(name).inc()
            with self._lock:
                self._progress[name].attempted = True  # ready: it is as asked, left alone
            log.info("source %s is suspended; not reconciled", name, extra={"source": name})
            return None
        progress = self._progress[name]
        started, started_at = time.monotonic(), _now()
        self.metrics.fetches.labels(name).inc()
        try:
            repo = fetch(source, self._stopping)
            head, ref = resolve(repo, source.ref)
        except SourceError as e:
            if self._stopping.is_set():  # the fetch was abandoned, not failed
                return None
            self.metrics.fetch_errors.labels(name).inc()
            log.warning("fetching %s failed: %s", name, e, extra={"source": name})
            changed = conditions.fetch_failed(
                progress.record.conditions, str(e), _now(), unavailable=isinstance(e, SourceUnavailable)
            )
            self._update(name, finished=True, conditions=changed)
            return self._retry(progress, source)
        stalled = progress.record.condition(conditions.STALLED)
        chosen = choose(
            head,
            seen=progress.seen,
            failures=progress.failures,
            triggers=triggers,
            stalled=bool(stalled and stalled.status),
            last_applied=progress.record.last_applied,
        )
        if chosen is None:
            return None
        sha, back = chosen
        before = progress.record.conditions
        if self._stopping.is_set():
            return None
        if back:
            ref = "last applied"
        else:
            message = f"Reconciling {ref}@sha1:{sha[:12]}"
            self._update(name, conditions=conditions.progressing(before, message, _now()), last_attempted=sha)
        try:
            result, summary, objects = self._reconcile(repo, source, settings, sha, ref)
        except _Abandoned:  # stopping: nothing was written; the next start reconciles it again
            log.info("stopping: %s@%s not applied", name, sha[:12], extra={"source": name})
            return None
        finally:
            pipeline.thaw()  # the revision's objects are dropped: what the stages froze is freed
        duration = time.monotonic() - started
        entry = Reconcile(sha, ref, started_at, duration, result.value, summary, ",".join(sorted(triggers)))
        if result.succeeded:
            message = f"Applied revision {ref}@sha1:{sha}: {summary}"
        else:
            good = progress.record.last_applied
            keeps = f"; {good[:12]} stays applied" if good else ""
            message = f"{ref}@sha1:{sha[:12]}: {summary}{keeps}"
            settings.state.inventories.record_error(name, message)
        # Metrics first, the record last: whoever sees the record sees the metrics that go with it.
        self.metrics.reconciles.labels(name, result.value).inc()
        self.metrics.duration.labels(name).observe(duration)
        if result is Result.APPLIED:
            self.metrics.last_applied.labels(name).set(time.time())
        kept, omitted = (
            kept_objects(objects)
            if objects is not None
            else (progress.record.objects, progress.record.objects_omitted)
        )
        self._update(
            name,
            seen=head,
            finished=True,
            objects=kept,
            objects_omitted=omitted,
            conditions=before
            if back and result.succeeded
            else conditions.finished(progress.record.conditions, result, message, _now()),
            last_applied=sha if result.succeeded else progress.record.last_applied,
            # A re-check that found the applied revision still in place (a drift check, a restart, a
            # request) is not news: the history keeps the reconciles that did or refused something.
            history=progress.record.history
            if result is Result.UNCHANGED and sha == progress.record.last_applied
            else (entry, *progress.record.history)[:HISTORY_LENGTH],
        )
        log.log(
            logging.INFO if result.succeeded else logging.WARNING,
            "%s %s@%s: %s",
            result.value,
            name,
            sha[:12],
            summary,
            extra={"source": name, "revision": sha, "result": result.value, "duration": round(duration, 3)},
        )
        if result is Result.FAILED:
            return self._retry(progress, source)
        progress.failures = 0
        return None

    def _reconcile(
        self, repo: git.Repo, source: Source, settings: Settings, sha: str, ref: str
    ) -> tuple[Result, str, list[ObjectResult] | None]:
        """How it ended, and what became of each object (None: it never got as far as objects)."""
        if source.verify is not None:
            try:
                verify_commit(repo, sha, source.verify)
            except SourceError as e:
                return Result.UNVERIFIED, str(e), None
        try:
            revision = read(repo, source, sha, ref)
        except SourceError as e:
            return Result.INVALID, str(e), None
        validated = pipeline.check(revision, settings.objects)
        with self._lock:
            self._progress[source.name].declared = validated.declared | {m.ref for m in validated.desired}
        if not validated.ok:
            first = validated.errors[0]
            return (
                Result.INVALID,
                f"invalid: {len(validated.errors)} error(s), the first {first.location}: "
                f"{first.code} {first.path + ': ' if first.path else ''}{first.message}",
                [
                    ObjectResult(
                        str(d.ref),
                        "invalid",
                        f"{d.location}: {d.code} {d.path + ': ' if d.path else ''}{d.message}",
                    )
                    for d in validated.errors
                    if d.ref is not None
                ],
            )
        try:
            with self.apply_lock:
                plan = pipeline.plan(
                    revision, validated, settings, source.name, self._declared_by_others(source.name)
                )
                # A split whose weights change under a rollout policy moves one step now; one whose
                # rollout is under way keeps its live weights (the runner walks them), so that is no drift.
                plan = driver.prepare(plan, settings, time.time())
                if not plan.has_changes:
                    if any(step.record is not None for step in plan.rollouts):
                        self._apply(plan, settings, source)  # a rollout takes a new policy
                    return Result.UNCHANGED, plan.summary(), _done(plan)
                if self._stopping.is_set():
                    raise _Abandoned
                log.info(
                    "applying %s@%s: %s", source.name, sha[:12], plan.summary(), extra={"source": source.name}
                )
                self._apply(plan, settings, source)
                return Result.APPLIED, plan.summary(), _done(plan)
        except StalePlan as e:
            return Result.FAILED, str(e), None
        except pipeline.Claimed as e:  # retried: it clears once the other source lets them go
            return (
                Result.FAILED,
                str(e),
                [ObjectResult(str(ref), "claimed", f"applied by {owner}") for ref, owner in e.claims.items()],
            )
        except PlanError as e:
            return Result.REFUSED, str(e), None
        except ObjectsFailed as e:  # the objects the cluster refused, each with its reason; retried
            return Result.FAILED, str(e), _refused(e)
        except GitmeshError as e:  # the cluster's (ClusterError) or any other: recorded alike, and retried
            return Result.FAILED, str(e), None

    def _apply(self, plan: Plan, settings: Settings, source: Source) -> None:
        """The one place the controller applies a plan; its rollouts start with it."""
        pipeline.apply(plan, settings, allow_empty=source.allow_empty)
        driver.begin(plan, self.notify)

    def _declared_by_others(self, name: str) -> dict[str, frozenset[ObjectRef]]:
        """What the other sources' last revisions declare, for those read since this process started."""
        with self._lock:
            return {
                other: p.declared
                for other, p in self._progress.items()
                if other != name and p.declared is not None
            }

    def _retry(self, progress: _Progress, source: Source) -> float:
        """One more consecutive failure: the seconds to wait before retrying."""
        progress.failures += 1  # only this source's run reads and writes it
        return min(RETRY_BASE * 2.0 ** (progress.failures - 1), source.interval)

    def _update(
        self, name: str, *, seen: str | None = None, finished: bool = False, **changes: object
    ) -> None:
        """Store the source's record with ``changes``, then show it, with ``seen`` and ``finished``
        (a first attempt is over), in one step under the lock: a reader (the HTTP port) sees either
        all of an attempt's outcome or none of it, and never a record the store does not have yet."""
        progress = self._progress[name]  # only this source's run changes its record
        record = replace(progress.record, **changes)  # type: ignore[arg-type]
        try:
            self.settings.state.records.save(record)
        except ClusterError as e:  # the record is kept in memory and written with the next one
            log.warning("cannot store the record of %s: %s", name, e, extra={"source": name})
        with self._lock:
            progress.record = record
            if seen is not None:
                progress.seen = seen
            if finished:
                progress.attempted = True


_DONE = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.DELETE: "deleted",
    Action.NOOP: "unchanged",
}


def _done(plan: Plan) -> list[ObjectResult]:
    return [ObjectResult(str(c.ref), _DONE[c.action]) for c in plan.changes]


def _refused(e: ObjectsFailed) -> list[ObjectResult]:
    return [
        ObjectResult(str(f.ref), "refused", f.detail)
        for f in e.failures
        if isinstance(f, ApiError) and f.ref is not None
    ]


def choose(
    head: str,
    *,
    seen: str | None,
    failures: int,
    triggers: frozenset[str],
    stalled: bool,
    last_applied: str | None,
) -> tuple[str, bool] | None:
    """The commit to reconcile now, and whether it is the last applied one standing in for a head
    that cannot be applied (drift is then put right to it, and the head's failure stays on record).
    None: nothing to do, the head was reconciled and nothing asks for more."""
    if head == seen and not failures and not triggers & FORCING:
        return None
    # Drift may arrive together with a poll or webhook (triggers coalesce under load): an unchanged,
    # stalled head is still not retried; only asking for it by hand does that.
    if (
        "drift" in triggers
        and "manual" not in triggers
        and head == seen
        and stalled
        and last_applied is not None
    ):
        return last_applied, True
    return head, False


class _Abandoned(Exception):
    """The controller is stopping and the plan was not applied."""


def _now() -> datetime:
    return datetime.now(UTC)
