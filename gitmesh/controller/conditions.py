"""How a source's conditions follow from what happened to it: a pure function per event.

The three types are Flux's: ``Ready`` (the source's wanted revision is applied), ``Reconciling``
(work is under way or will be retried) and ``Stalled`` (it cannot get further without a new
commit: the head is invalid, or its apply was refused).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from gitmesh.state.records import Condition

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"


class Result(Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    INVALID = "invalid"  # the revision failed to load or validate
    UNVERIFIED = "unverified"  # the head is not signed by a key the source lists
    REFUSED = "refused"  # the plan may not be applied as it is (deletes everything, conflicts)
    FAILED = "failed"  # the backend failed; retried

    @property
    def succeeded(self) -> bool:
        return self in (Result.APPLIED, Result.UNCHANGED)

    @property
    def stalls(self) -> bool:
        """Retrying the same revision cannot help."""
        return self in (Result.INVALID, Result.UNVERIFIED, Result.REFUSED)


_REASONS = {
    Result.APPLIED: "ReconciliationSucceeded",
    Result.UNCHANGED: "ReconciliationSucceeded",
    Result.INVALID: "ValidationFailed",
    Result.UNVERIFIED: "VerificationFailed",
    Result.REFUSED: "ApplyRefused",
    Result.FAILED: "ApplyFailed",
}


def progressing(current: tuple[Condition, ...], message: str, now: datetime) -> tuple[Condition, ...]:
    """A revision is being reconciled; Ready stays as it was until the result."""
    return _set(current, now, (RECONCILING, True, "Progressing", message))


def finished(
    current: tuple[Condition, ...], result: Result, message: str, now: datetime
) -> tuple[Condition, ...]:
    reason = _REASONS[result]
    if result.succeeded:
        return _set(
            current,
            now,
            (READY, True, reason, message),
            (RECONCILING, False, reason, "Reconciliation finished"),
            (STALLED, False, reason, "Reconciliation finished"),
        )
    if result.stalls:
        return _set(
            current,
            now,
            (READY, False, reason, message),
            (RECONCILING, False, reason, "Waiting for a new commit"),
            (STALLED, True, reason, message),
        )
    return _retrying(current, reason, message, now)


def fetch_failed(
    current: tuple[Condition, ...], message: str, now: datetime, *, unavailable: bool = False
) -> tuple[Condition, ...]:
    """The fetch failed; ``unavailable``: because the remote did not answer in time."""
    return _retrying(current, "SourceUnavailable" if unavailable else "FetchFailed", message, now)


def _retrying(
    current: tuple[Condition, ...], reason: str, message: str, now: datetime
) -> tuple[Condition, ...]:
    return _set(
        current,
        now,
        (READY, False, reason, message),
        (RECONCILING, True, "ProgressingWithRetry", message),
        (STALLED, False, reason, "Retrying"),
    )


def _set(
    current: tuple[Condition, ...], now: datetime, *updates: tuple[str, bool, str, str]
) -> tuple[Condition, ...]:
    """The conditions with ``updates`` applied; a condition keeps its transition time while its
    status holds."""
    by_type = {c.type: c for c in current}
    for type_, status, reason, message in updates:
        before = by_type.get(type_)
        since = before.since if before is not None and before.status == status else now
        by_type[type_] = Condition(type_, status, reason, message, since)
    return tuple(by_type[t] for t in (READY, RECONCILING, STALLED) if t in by_type)
