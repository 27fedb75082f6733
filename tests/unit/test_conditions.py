"""Conditions follow what happened to a source, Flux's way; transition times move only on a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gitmesh.controller import conditions
from gitmesh.controller.conditions import Result

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)


def view(conds: tuple[conditions.Condition, ...]) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in conds}


@pytest.mark.parametrize(
    ("result", "ready", "reconciling", "stalled"),
    [
        (Result.APPLIED, (True, "ReconciliationSucceeded"), False, False),
        (Result.UNCHANGED, (True, "ReconciliationSucceeded"), False, False),
        (Result.INVALID, (False, "ValidationFailed"), False, True),
        (Result.REFUSED, (False, "ApplyRefused"), False, True),
        (Result.FAILED, (False, "ApplyFailed"), True, False),
    ],
)
def test_each_result(result: Result, ready: tuple[bool, str], reconciling: bool, stalled: bool) -> None:
    got = view(conditions.finished((), result, "m", T0))
    assert got["Ready"] == ready
    assert (got["Reconciling"][0], got["Stalled"][0]) == (reconciling, stalled)


@pytest.mark.parametrize(("unavailable", "reason"), [(False, "FetchFailed"), (True, "SourceUnavailable")])
def test_a_fetch_failure_is_retried_not_stalled(unavailable: bool, reason: str) -> None:
    got = view(conditions.fetch_failed((), "cannot read repository", T0, unavailable=unavailable))
    assert got == {
        "Ready": (False, reason),
        "Reconciling": (True, "ProgressingWithRetry"),
        "Stalled": (False, reason),
    }


def test_transition_times_move_only_when_the_status_changes() -> None:
    ready = conditions.finished((), Result.APPLIED, "applied a", T0)
    progressing = conditions.progressing(ready, "Reconciling b", T1)
    again = conditions.finished(progressing, Result.APPLIED, "applied b", T1)
    by_type = {c.type: c for c in again}
    assert (by_type["Ready"].since, by_type["Ready"].message) == (T0, "applied b")  # Ready all along
    assert by_type["Reconciling"].since == T1  # True at T1, then False again at T1
    assert view(progressing)["Ready"] == (True, "ReconciliationSucceeded")  # unknown until the result
    broken = {c.type: c for c in conditions.finished(again, Result.INVALID, "bad", T1)}
    assert (broken["Ready"].status, broken["Ready"].since) == (False, T1)
