"""The metrics model, pure: parsing the sidecars' stats, windows, edges, quantiles."""

from __future__ import annotations

import pytest

from gitmesh.metrics import model, prometheus

STATS = """\
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",envoy_cluster_name="shop/web-v2|80"}} {ok}
envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",envoy_cluster_name="shop/web-v2|80"}} {bad}
envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",envoy_cluster_name="local|8080"}} 7
envoy_cluster_upstream_rq_total{{envoy_cluster_name="shop/web-v2|80"}} 999
# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{{envoy_cluster_name="shop/web-v2|80"}} {ok}
# TYPE envoy_cluster_upstream_cx_active gauge
envoy_cluster_upstream_cx_active{{envoy_cluster_name="shop/web-v2|80"}} 3
envoy_cluster_upstream_cx_tx_bytes_total{{envoy_cluster_name="shop/web-v2|80"}} {sent}
envoy_cluster_upstream_cx_rx_bytes_total{{envoy_cluster_name="shop/web-v2|80"}} 0
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="shop/web-v2|80",le="5"}} {fast}
envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="shop/web-v2|80",le="500"}} {total}
envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="shop/web-v2|80",le="+Inf"}} {total}
envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name="shop/web-v2|80"}} 0
envoy_cluster_upstream_rq_time_count{{envoy_cluster_name="shop/web-v2|80"}} {total}
"""


def stats(ok: int, bad: int, fast: int) -> model.Reading:
    return model.parse(STATS.format(ok=ok, bad=bad, fast=fast, total=ok + bad, sent=100 * ok))


def test_only_the_stats_of_mesh_destinations_are_read() -> None:
    reading = stats(10, 2, 4)
    assert set(reading) == {"shop/web-v2"}  # the local app's cluster is not a destination
    row = reading["shop/web-v2"]
    assert (row["requests"], row["errors"]) == (12, 2)  # rq_total is not counted again
    assert row["buckets"] == {"5": 4, "500": 12, "+Inf": 12}
    assert (row["connections"], row["active"], row["sent"], row["received"]) == (10, 3, 1000, 0)


def test_counters_named_the_openmetrics_way_are_read_too() -> None:
    line = 'envoy_cluster_upstream_rq_xx_total{envoy_response_code_class="2",envoy_cluster_name="a/b|1"} 5\n'
    assert model.parse(line)["a/b"]["requests"] == 5


def test_a_window_sums_sidecars_per_source_and_destination() -> None:
    before = {"a": ("shop/front", stats(10, 0, 10)), "b": ("shop/front", stats(10, 0, 10))}
    now = {"a": ("shop/front", stats(60, 50, 20)), "b": ("shop/front", stats(60, 50, 20))}
    ((key, totals),) = model.window(now, before).items()
    assert key == ("shop/front", "shop/web-v2")
    assert (totals.requests, totals.errors, totals.success_rate) == (200, 100, 50)
    assert (totals.connections, totals.active, totals.sent) == (100, 6, 10000)
    p99 = totals.latency(0.99)
    assert p99 is not None and 5 < p99 <= 500


def test_a_restarted_sidecar_counts_from_zero() -> None:
    before = {"a": ("shop/front", stats(1000, 0, 1000))}
    after = {"a": ("shop/front", stats(30, 10, 40))}
    assert model.window(after, before)[("shop/front", "shop/web-v2")].requests == 40


def test_destinations_sum_their_sources() -> None:
    now = {"a": ("shop/front", stats(10, 0, 10)), "b": ("shop/api", stats(30, 10, 40))}
    edges = model.window(now, None)
    assert len(edges) == 2
    assert model.per_destination(edges)["shop/web-v2"].requests == 50


def test_edges_are_rates_worst_first() -> None:
    healthy = {"a": ("shop/front", stats(100, 0, 100))}
    failing = {"b": ("shop/api", stats(50, 50, 100))}
    edges = model.edges(model.window({**healthy, **failing}, None), seconds=10)
    assert [(e.source, e.rps, e.success_rate) for e in edges] == [
        ("shop/api", 10, 50),
        ("shop/front", 10, 100),
    ]
    assert edges[1].sent_bps == 1000 and edges[1].connections == 3
    assert edges[1].p50_ms is not None and edges[1].p50_ms <= 5


def test_quantile_interpolates_within_the_bucket() -> None:
    assert model.quantile(0.99, {}) is None
    assert model.quantile(0.99, {10: 0, float("inf"): 0}) is None
    assert model.quantile(0.5, {10: 50, 20: 100, float("inf"): 100}) == pytest.approx(10)
    assert model.quantile(0.99, {250: 0, 500: 100, float("inf"): 100}) == pytest.approx(497.5)
    assert model.quantile(0.99, {5: 1, float("inf"): 100}) == 5  # past the last bound: the bound


def test_prometheus_scrapes_only_the_models_stats_and_labels_each_sidecar_with_its_service() -> None:
    config = prometheus.config("/etc/gitmesh", "15s")
    (job,) = config["scrape_configs"]
    assert job["params"]["filter"] == [model.ADMIN_FILTER] and "usedonly" in job["params"]
    assert job["file_sd_configs"][0]["files"] == ["/etc/gitmesh/sidecars.json"]
    assert config["rule_files"] == ["/etc/gitmesh/gitmesh-rules.yml"]
    assert prometheus.targets({"10.0.0.2:15000": "shop/api", "10.0.0.1:15000": "shop/front"}) == [
        {"targets": ["10.0.0.1:15000"], "labels": {"source": "shop/front"}},
        {"targets": ["10.0.0.2:15000"], "labels": {"source": "shop/api"}},
    ]


def test_every_recorded_series_is_a_rule_summed_per_edge() -> None:
    recorded = {r["record"]: r["expr"] for r in prometheus.rules()["groups"][0]["rules"]}
    assert set(recorded) == {
        prometheus.REQUESTS,
        prometheus.ERRORS,
        prometheus.SUCCESS,
        *prometheus.LATENCY.values(),
        prometheus.SENT,
        prometheus.RECEIVED,
        prometheus.CONNECTIONS,
    }
    assert all("sum by (source, destination" in expr for expr in recorded.values())
