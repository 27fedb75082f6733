"""The metrics model in Prometheus: a scrape configuration for the sidecars (file-based service
discovery, so that the target list can be rewritten as sidecars come and go without a reload),
and recording and alerting rules for the golden signals per source -> destination. Pure: values
to write as YAML or JSON.

Each target carries its sidecar's service as the ``source`` label; ``destination`` is the
destination cluster's service (``envoy_cluster_name`` without its port), or for a refused call the
service its RBAC policy names. The recorded names are those the dashboards query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitmesh.metrics import model

JOB = "gitmesh-sidecars"
TARGETS = "sidecars.json"  # the file-based discovery file, beside the configuration
RULES = "gitmesh-rules.yml"
WINDOW = "1m"
EDGE = ("source", "destination")

_NOT_5XX = ',envoy_response_code_class!="5"'
_MESH = 'envoy_cluster_name=~"[^/|]+/[^|]+[|].*"'  # mesh services only, not the local app's cluster


def _by_edge(expr: str, *extra: str) -> str:
    """``expr`` summed per source and destination (the destination taken from the cluster name)."""
    labels = ", ".join((*EDGE, *extra))
    relabelled = f'label_replace({expr}, "destination", "$1", "envoy_cluster_name", "([^|]+)[|].*")'
    return f"sum by ({labels}) ({relabelled})"


def _rate(metric: str, selector: str = "") -> str:
    return f"rate({metric}{{{_MESH}{selector}}}[{WINDOW}])"


# Recorded series: name -> expression. Rates are per second over the window.
REQUESTS = f"gitmesh:edge_requests:rate{WINDOW}"
ERRORS = f"gitmesh:edge_errors:rate{WINDOW}"
SUCCESS = f"gitmesh:edge_success_ratio:rate{WINDOW}"
LATENCY = {q: f"gitmesh:edge_latency_ms:p{q}" for q in (50, 90, 99)}
SENT = f"gitmesh:edge_sent_bytes:rate{WINDOW}"
RECEIVED = f"gitmesh:edge_received_bytes:rate{WINDOW}"
CONNECTIONS = "gitmesh:edge_connections:active"
DENIED = f"gitmesh:edge_denied:rate{WINDOW}"  # calls the mesh refused (no TrafficTarget allows them)
# The fleet, from the hub's reader (``gitmesh run --fleet-view``): 1 for each cluster's state, 0 for others.
FLEET_COMPLIANCE = "gitmesh_fleet_cluster_compliance"
FLEET_STATES = "gitmesh:fleet_clusters:by_state"
FLEET_COMPLIANT = "gitmesh:fleet_cluster:compliant"

RECORDED: dict[str, str] = {
    REQUESTS: _by_edge(_rate(model.RESPONSES)),
    ERRORS: _by_edge(_rate(model.RESPONSES, ',envoy_response_code_class="5"')),
    SUCCESS: _by_edge(_rate(model.RESPONSES, _NOT_5XX)) + f" / {REQUESTS}",
    **{
        name: f"histogram_quantile({q / 100}, {_by_edge(_rate(model.LATENCY), 'le')})"
        for q, name in LATENCY.items()
    },
    SENT: _by_edge(_rate(model.SENT)),
    RECEIVED: _by_edge(_rate(model.RECEIVED)),
    CONNECTIONS: _by_edge(f"{model.ACTIVE}{{{_MESH}}}"),
    DENIED: (
        f"sum by ({', '.join(EDGE)}) (label_replace(rate({model.DENIED}"
        f'{{envoy_http_conn_manager_prefix="{model.DENIED_BY}"}}[{WINDOW}]),'
        ' "destination", "$1", "envoy_rbac_policy_name", "(.+)"))'
    ),
}
RECORDED_FLEET: dict[str, str] = {
    FLEET_STATES: f"sum by (state) ({FLEET_COMPLIANCE})",
    FLEET_COMPLIANT: f'max by (cluster) ({FLEET_COMPLIANCE}{{state="Compliant"}})',
}

ALERTS: list[dict[str, Any]] = [
    {
        "alert": "GitmeshEdgeFailing",
        "expr": f"{SUCCESS} < 0.99 and {REQUESTS} > 0.1",
        "for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "{{ $labels.source }} -> {{ $labels.destination }}: "
            "{{ $value | humanizePercentage }} of requests succeed"
        },
    },
    {
        "alert": "GitmeshEdgeSlow",
        "expr": f"{LATENCY[99]} > 1000",
        "for": "5m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "{{ $labels.source }} -> {{ $labels.destination }}: p99 {{ $value }} ms"},
    },
    {
        "alert": "GitmeshFleetClusterNotCompliant",
        "expr": f"{FLEET_COMPLIANT} == 0",
        "for": "10m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "fleet member {{ $labels.cluster }} is not Compliant"},
    },
    {
        "alert": "GitmeshSidecarUnreachable",
        "expr": f'up{{job="{JOB}"}} == 0',
        "for": "1m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "{{ $labels.instance }} ({{ $labels.source }}): its stats cannot be read"},
    },
]


def rules() -> dict[str, Any]:
    return {
        "groups": [
            {"name": "gitmesh-edges", "rules": [{"record": n, "expr": e} for n, e in RECORDED.items()]},
            {"name": "gitmesh-fleet", "rules": [{"record": n, "expr": e} for n, e in RECORDED_FLEET.items()]},
            {"name": "gitmesh-alerts", "rules": ALERTS},
        ]
    }


def config(directory: str, scrape_interval: str) -> dict[str, Any]:
    """prometheus.yml: the sidecars' job (only the model's stats, filtered at each sidecar) and the rules."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [f"{directory}/{RULES}"],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/stats/prometheus",
                "params": {"usedonly": [""], "filter": [model.ADMIN_FILTER]},
                "file_sd_configs": [{"files": [f"{directory}/{TARGETS}"], "refresh_interval": "10s"}],
            }
        ],
    }


def targets(sidecars: Mapping[str, str]) -> list[dict[str, Any]]:
    """The discovery file: each sidecar's admin address, labelled with the service it serves."""
    return [{"targets": [admin], "labels": {"source": source}} for admin, source in sorted(sidecars.items())]
