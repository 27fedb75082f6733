"""The one reading of a length of time, wherever gitmesh takes one."""

from __future__ import annotations

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
