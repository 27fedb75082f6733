"""The one reading of a length of time and of an instant, wherever gitmesh takes one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gitmesh import durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1.5h", 5400), ("7d", 604800.0), (" 2s ", 2.0), (2, 2)],
)
def test_durations(value: str | int, seconds: float) -> None:
    assert durations.seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "5", "1w", "-1s", "0s", "0.0m", 0, "1 h", "s"])
def test_bad_durations(value: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        durations.seconds(value)


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # a Time, as the stores write it
        ("2026-01-02T03:04:05.250000Z", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),  # a MicroTime
        ("", None),
        (None, None),
    ],
)
def test_instants(value: str | None, instant: datetime | None) -> None:
    assert durations.instant(value) == instant
