"""Reading the sidecars' Envoy stats from their admin interfaces (``127.0.0.1:15000`` and the like)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gitmesh.errors import MetricsError
from gitmesh.metrics import model

# Only the stats the model reads, and only those a sidecar used: a tenth of the bytes or less.
QUERY = urllib.parse.urlencode({"usedonly": "", "filter": model.ADMIN_FILTER})


@dataclass(frozen=True)
class Available:
    """The sidecars that could be read, and those that could not: a view shows the first and names
    the others, where a rollout, judging on every one, fails (``EnvoyStats.read``)."""

    read: dict[str, model.Sidecar]  # admin address -> its reading
    unreachable: dict[str, str]  # admin address -> why not, naming the sidecar's service

    def carried(self, before: Mapping[str, model.Sidecar]) -> dict[str, model.Sidecar]:
        """The readings, with the last of each unreachable sidecar in its place: its window is then
        empty rather than, once it is back, all it has counted since it started."""
        return {**{a: before[a] for a in self.unreachable if a in before}, **self.read}


class EnvoyStats:
    """Scrapes the sidecars ``sidecars()`` names at each reading: admin address -> the service the
    sidecar serves (``namespace/name``, "" when not known)."""

    def __init__(self, sidecars: Callable[[], Mapping[str, str]]) -> None:
        self.sidecars = sidecars

    def read(self) -> dict[str, model.Sidecar]:
        """Every sidecar's reading; one that cannot be read fails the whole."""
        return {admin: _scrape(admin, source) for admin, source in self.sidecars().items()}

    def read_available(self) -> Available:
        """Every sidecar's reading that can be had."""
        read, unreachable = {}, {}
        for admin, source in self.sidecars().items():
            try:
                read[admin] = _scrape(admin, source)
            except MetricsError as e:
                unreachable[admin] = f"{source or '?'}: {e}"
        return Available(read, unreachable)


def _scrape(admin: str, source: str) -> model.Sidecar:
    try:
        with urllib.request.urlopen(f"http://{admin}/stats/prometheus?{QUERY}", timeout=5) as r:
            return (source, model.parse(r.read().decode()))
    except (OSError, urllib.error.HTTPError) as e:
        raise MetricsError(f"cannot read the Envoy stats at {admin}: {e}") from e
