"""The metrics model, pure: parsing the sidecars' stats, windows, edges, quantiles."""

from __future__ import annotations

import http.server
import re
import threading

import pytest

from gitmesh.demo import free_port
from gitmesh.errors import MetricsError
from gitmesh.metrics import envoy, model, prometheus

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
        prometheus.DENIED,
    }
    assert all("sum by (source, destination" in expr for expr in recorded.values())


# A caller's sidecar refusing what it may not call: its outbound RBAC policy names the destination.
def _denied(policy: str, manager: str, count: str) -> str:
    return (
        f'envoy_http_rbac_policy_denied{{envoy_rbac_policy_name="{policy}",'
        f'envoy_http_conn_manager_prefix="{manager}"}} {count}\n'
    )


REFUSED = (
    "# TYPE envoy_http_rbac_policy_denied counter\n"
    + _denied("shop/web", "outbound", "{web}")
    + _denied("shop/db", "outbound", "4")
    + _denied("shop/api", "inbound", "9")
    + 'envoy_http_rbac_denied{envoy_http_conn_manager_prefix="outbound"} 999\n'
)


def refused(web: int) -> model.Reading:
    return model.parse(REFUSED.replace("{web}", str(web)))


def test_refused_calls_count_for_the_destination_their_policy_names() -> None:
    reading = refused(30)
    # Only the outbound routes' refusals; the filter's total is not counted again.
    assert {k: row["denied"] for k, row in reading.items()} == {"shop/web": 30, "shop/db": 4}
    assert reading["shop/web"]["requests"] == 0  # refused calls are not requests sent
    line = _denied("a/b", "outbound", "5").replace("_denied{", "_denied_total{")
    assert model.parse(line)["a/b"]["denied"] == 5


def test_refused_calls_are_rates_per_edge_and_come_first() -> None:
    before = {"t": ("shop/thief", refused(10)), "f": ("shop/front", stats(10, 0, 10))}
    now = {"t": ("shop/thief", refused(30)), "f": ("shop/front", stats(60, 50, 20))}
    edges = model.edges(model.window(now, before), seconds=10)
    assert [(e.source, e.destination, e.denied_rps) for e in edges] == [
        ("shop/thief", "shop/web", 2.0),  # 20 refused in 10 s, before the failing edge
        ("shop/front", "shop/web-v2", 0.0),
        ("shop/thief", "shop/db", 0.0),  # refused before, not in this window
    ]
    assert edges[0].rps == 0 and edges[0].success_rate is None
    # A sidecar restarted counts its refusals from zero, and a mark kept before refusals were read
    # (rows without them) counts them all.
    assert model.window({"t": ("shop/thief", refused(3))}, before)[("shop/thief", "shop/web")].denied == 3
    old = {
        "t": ("shop/thief", {"shop/web": {k: v for k, v in refused(10)["shop/web"].items() if k != "denied"}})
    }
    assert model.window(now, old)[("shop/thief", "shop/web")].denied == 30


def test_the_admin_filter_asks_for_the_outbound_refusals_only() -> None:
    wanted = re.compile(model.ADMIN_FILTER)
    assert wanted.search("http.outbound.rbac.policy.shop/web.denied")
    assert wanted.search("cluster.shop/web|80.upstream_rq_2xx")
    assert not wanted.search("http.inbound.rbac.policy.shop/web.denied")
    assert not wanted.search("http.outbound.rbac.denied")


def test_a_sidecar_that_cannot_be_read_is_named_and_the_others_read() -> None:
    with Served(REFUSED.replace("{web}", "7")) as good:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        stats = envoy.EnvoyStats(lambda: {good: "shop/thief", dead: "shop/gone"})
        available = stats.read_available()
        assert available.read[good] == ("shop/thief", refused(7))
        assert set(available.unreachable) == {dead}
        assert available.unreachable[dead].startswith("shop/gone: cannot read the Envoy stats at")
        with pytest.raises(MetricsError, match=dead):
            stats.read()  # a rollout judges on every sidecar or none
    # An unreachable sidecar keeps its last reading: its window is empty, not its whole history.
    before = {dead: ("shop/gone", refused(5))}
    carried = available.carried(before)
    assert carried[dead] is before[dead] and carried[good] == available.read[good]


class Served:
    """A stand-in admin endpoint serving one stats page, on a free port (its address)."""

    def __init__(self, text: str) -> None:
        body = text.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
