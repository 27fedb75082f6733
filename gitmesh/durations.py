"""Time as gitmesh reads it: lengths of time as people write them in gitmesh's files, options and
annotations, and instants as the state stores and the Kubernetes API write them."""

from __future__ import annotations

import re
from datetime import datetime

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


def instant(value: str | None) -> datetime | None:
    """An RFC 3339 time (``2026-01-02T03:04:05Z``, with or without fractions of a second, as
    Kubernetes writes a Time or a MicroTime), or None for none."""
    return datetime.fromisoformat(value) if value else None


__all__ = ["instant", "seconds"]
