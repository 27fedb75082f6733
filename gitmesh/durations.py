"""Lengths of time as people write them in gitmesh's files, options and annotations."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")


def seconds(value: str | float) -> float:
    """Seconds, from a number of seconds or a number and a unit: ``500ms``, ``30s``, ``5m``, ``1h``,
    ``7d``. ValueError when it is neither, or not more than zero."""
    if isinstance(value, int | float):
        found = float(value)
    elif match := _DURATION.match(value.strip()):
        found = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 500ms, 30s, 5m, 1h, 7d)")
    if found <= 0:
        raise ValueError(f"{value!r}: a duration must be more than zero")
    return found


__all__ = ["seconds"]
