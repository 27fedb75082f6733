"""The Prometheus metrics source: PromQL over the Envoy metrics a Prometheus scrapes from the sidecars.

Each query is evaluated for one backend at a time, with ``$backend`` (``namespace/service``) and
``$interval`` (the analysis window, e.g. ``30s``) filled in; a policy may replace any of them
(``rollout.gitmesh.dev/query-*``). Its mark is empty: Prometheus keeps the history itself.
"""

from __future__ import annotations

import json
import math
import string
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from gitmesh.errors import MetricsError
from gitmesh.plan.policy import Policy
from gitmesh.rollout.metrics import Measurement
from gitmesh.rollout.model import Sample

_CLUSTER = 'envoy_cluster_name=~"$backend\\\\|.*"'  # every port of the backend's service
QUERIES = {
    "requests": f"sum(increase(envoy_cluster_upstream_rq_xx{{{_CLUSTER}}}[$interval]))",
    "success-rate": (
        f'sum(rate(envoy_cluster_upstream_rq_xx{{{_CLUSTER},envoy_response_code_class!="5"}}[$interval]))'
        f" / sum(rate(envoy_cluster_upstream_rq_xx{{{_CLUSTER}}}[$interval]))"
    ),
    "latency-p99": (
        f"histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{{{_CLUSTER}}}"
        "[$interval])))"
    ),
}


def queries(policy: Policy, backend: str, window: float) -> dict[str, str]:
    """The three queries for one backend, the policy's overrides taking precedence."""
    values = {"backend": backend, "interval": f"{max(1, round(window))}s"}
    return {
        name: string.Template(policy.queries.get(name, default)).safe_substitute(values)
        for name, default in QUERIES.items()
    }


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, promql: str) -> float | None:
        """A scalar from an instant query: the single series' value, None for no series or NaN."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                detail = e.read().decode(errors="replace")[:300]
            raise MetricsError(f"Prometheus refused {promql!r}: {e.code} {detail}") from e
        except (OSError, ValueError) as e:
            raise MetricsError(f"cannot query Prometheus at {self.url}: {e}") from e
        result = body.get("data", {}).get("result", [])
        if body.get("data", {}).get("resultType") == "scalar":
            result = [{"value": result}]
        if len(result) > 1:
            raise MetricsError(f"{promql!r} returned {len(result)} series; a rollout query must return one")
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def measure(
        self, backends: Sequence[str], policy: Policy, window: float, mark: Mapping[str, Any] | None
    ) -> Measurement:
        samples = {}
        for backend in backends:
            q = queries(policy, backend, window)
            requests = self.query(q["requests"]) or 0.0
            rate = self.query(q["success-rate"])
            samples[backend] = Sample(
                requests, requests * (1 - rate) if rate is not None else 0.0, self.query(q["latency-p99"])
            )
        return Measurement(samples, {})
