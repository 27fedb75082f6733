"""Reading the sidecars' Envoy stats from their admin interfaces (``127.0.0.1:15000`` and the like)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from gitmesh.errors import MetricsError
from gitmesh.metrics import model

# Only the stats the model reads, and only those a sidecar used: a tenth of the bytes or less.
QUERY = urllib.parse.urlencode({"usedonly": "", "filter": model.ADMIN_FILTER})


class EnvoyStats:
    """Scrapes the sidecars ``sidecars()`` names at each reading: admin address -> the service the
    sidecar serves (``namespace/name``, "" when not known)."""

    def __init__(self, sidecars: Callable[[], Mapping[str, str]]) -> None:
        self.sidecars = sidecars

    def read(self) -> dict[str, model.Sidecar]:
        out = {}
        for admin, source in self.sidecars().items():
            try:
                with urllib.request.urlopen(f"http://{admin}/stats/prometheus?{QUERY}", timeout=5) as r:
                    out[admin] = (source, model.parse(r.read().decode()))
            except (OSError, urllib.error.HTTPError) as e:
                raise MetricsError(f"cannot read the Envoy stats at {admin}: {e}") from e
        return out
