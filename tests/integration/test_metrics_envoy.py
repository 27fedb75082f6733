"""The metrics model read from real Envoy sidecars: bookbuyer calling the bookstore, and bookthief
refused."""

from __future__ import annotations

import urllib.request

import pytest

from gitmesh.demo import Demo, eventually, free_port
from gitmesh.errors import MetricsError
from gitmesh.metrics import envoy, model
from tests.integration.rollouts import Traffic, demo

pytestmark = pytest.mark.integration
__all__ = ["demo"]  # fixtures, used by name


def test_the_sidecars_stats_give_each_edge(demo: Demo) -> None:
    admin = f"127.0.0.1:{demo.sidecars['bookbuyer'].admin_port}"
    stats = envoy.EnvoyStats(lambda: {admin: "bookbuyer/bookbuyer"})
    before = stats.read()
    edge = ("bookbuyer/bookbuyer", "bookstore/bookstore-v1")

    def counted(reading: dict[str, model.Sidecar]) -> bool:
        totals = model.window(reading, before).get(edge, model.Totals())
        return totals.requests > 20 and totals.latency(0.99) is not None  # histograms move at a flush

    with Traffic(demo):
        now = eventually(stats.read, counted, "requests and latencies counted")
    edges = {(e.source, e.destination): e for e in model.edges(model.window(now, before), seconds=1)}
    seen = edges[edge]
    assert seen.success_rate == 100
    assert seen.p99_ms is not None and seen.connections >= 1 and seen.sent_bps > 0
    # Filtered at the admin endpoint, the reading is what the whole page gives of the clusters used,
    # in a fraction of the text.
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as r:
        whole = r.read().decode()
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus?{envoy.QUERY}", timeout=5) as r:
        filtered = r.read().decode()

    def counters(reading: model.Reading) -> dict[str, tuple[float, float, float, list[str]]]:
        # Histograms move at the next flush, between the two pages: their bounds are compared.
        return {
            k: (row["requests"], row["errors"], row["connections"], sorted(row["buckets"]))
            for k, row in reading.items()
            if row["connections"]
        }

    assert counters(model.parse(filtered)) == counters(model.parse(whole))
    assert len(filtered) < len(whole) / 3


def test_a_refused_call_is_counted_by_the_callers_sidecar_for_its_destination(demo: Demo) -> None:
    thief = f"127.0.0.1:{demo.sidecars['bookthief'].admin_port}"
    gone = f"127.0.0.1:{free_port()}"  # a sidecar nothing answers for
    stats = envoy.EnvoyStats(lambda: {thief: "bookthief/bookthief", gone: "bookstore/gone"})
    before = stats.read_available()
    assert list(before.unreachable) == [gone] and list(before.read) == [thief]
    statuses = {demo.buy(caller="bookthief")[0] for _ in range(10)}
    assert statuses == {403}  # no TrafficTarget names bookthief: its own sidecar refuses
    now = stats.read_available()
    edges = {(e.source, e.destination): e for e in model.edges(model.window(now.read, before.read), 1)}
    refused = edges[("bookthief/bookthief", "bookstore/bookstore")]
    assert refused.denied_rps == 10 and refused.rps == 0
    assert all(e.denied_rps == 0 for k, e in edges.items() if k[1] != "bookstore/bookstore")
    with pytest.raises(MetricsError, match=gone):
        stats.read()  # what a rollout reads: every sidecar, or it fails
