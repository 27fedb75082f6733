"""The embedded metrics source: the sidecars' own Envoy stats, from their admin /stats/prometheus.

The callers' sidecars carry out the split, so their upstream stats per backend cluster
(``<namespace>/<service>|<port>``) are exactly the traffic each backend got. Counters are
cumulative: a window is the difference from the last reading (the mark), per sidecar, so a
restarted sidecar (counters back at zero) counts from zero rather than going negative.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gitmesh.plan.policy import Policy
from gitmesh.rollout.metrics import Measurement, MetricsError, quantile
from gitmesh.rollout.model import Sample

_RESPONSES = "envoy_cluster_upstream_rq_xx"
_LATENCY = "envoy_cluster_upstream_rq_time_bucket"

Reading = dict[str, dict[str, Any]]  # backend -> {"requests", "errors", "buckets": {le: count}}


def parse(text: str) -> Reading:
    """Cumulative responses, 5xx and latency buckets per backend from one sidecar's stats."""
    out: Reading = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name.removesuffix("_total")  # the parser names counter samples the OpenMetrics way
            if name not in (_RESPONSES, _LATENCY):
                continue
            cluster = s.labels.get("envoy_cluster_name", "")
            backend, sep, _port = cluster.partition("|")
            if not sep or "/" not in backend:
                continue  # the local app's cluster, the ADS cluster
            row = out.setdefault(backend, {"requests": 0.0, "errors": 0.0, "buckets": {}})
            if name == _RESPONSES:
                row["requests"] += s.value
                if s.labels.get("envoy_response_code_class") == "5":
                    row["errors"] += s.value
            else:
                le = s.labels["le"]
                row["buckets"][le] = row["buckets"].get(le, 0.0) + s.value
    return out


def window(now: Mapping[str, Reading], before: Mapping[str, Reading] | None) -> dict[str, Sample]:
    """Per-backend samples between two readings of every sidecar (sidecar -> reading)."""
    totals: dict[str, dict[str, Any]] = {}
    for sidecar, reading in now.items():
        old = (before or {}).get(sidecar, {})
        for backend, row in reading.items():
            prev = old.get(backend, {"requests": 0.0, "errors": 0.0, "buckets": {}})
            reset = row["requests"] < prev["requests"]  # the sidecar restarted
            base: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "buckets": {}} if reset else prev
            acc = totals.setdefault(backend, {"requests": 0.0, "errors": 0.0, "buckets": {}})
            acc["requests"] += row["requests"] - base["requests"]
            acc["errors"] += row["errors"] - base["errors"]
            for le, count in row["buckets"].items():
                acc["buckets"][le] = acc["buckets"].get(le, 0.0) + count - base["buckets"].get(le, 0.0)
    return {
        backend: Sample(
            acc["requests"],
            acc["errors"],
            quantile(0.99, {float(le): c for le, c in acc["buckets"].items()}),
        )
        for backend, acc in totals.items()
    }


class EnvoyStats:
    """Scrapes each sidecar's admin address (``127.0.0.1:15000``): those ``admins()`` names at each
    reading (given by hand, or the sidecars connected to gitmesh run)."""

    def __init__(self, admins: Callable[[], Sequence[str]]) -> None:
        self.admins = admins

    def read(self) -> dict[str, Reading]:
        out = {}
        for admin in self.admins():
            try:
                with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as r:
                    out[admin] = parse(r.read().decode())
            except (OSError, urllib.error.HTTPError) as e:
                raise MetricsError(f"cannot read the Envoy stats at {admin}: {e}") from e
        return out

    def measure(
        self, backends: Sequence[str], policy: Policy, window_s: float, mark: Mapping[str, Any] | None
    ) -> Measurement:
        reading = self.read()
        samples = window(reading, mark) if mark is not None else {}  # no mark yet: this reading is one
        return Measurement({b: s for b, s in samples.items() if b in backends}, reading)
