"""Grafana dashboards of the metrics model, built with grafana-foundation-sdk from the series the
Prometheus rules record (``gitmesh.metrics.prometheus``): the mesh overview, one service, a
rollout's backends side by side, and the fleet's compliance. Pure: dashboard name -> its JSON model."""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.builders import prometheus as promql
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from gitmesh.metrics import prometheus

_SOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")  # chosen on the dashboard
_EDGE = "{{source}} -> {{destination}}"  # legends
_BACKEND = "{{destination}}"


def _panel(title: str, unit: str, queries: list[tuple[str, str]], width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(_SOURCE).span(width).height(8)
    for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(promql.Dataquery().ref_id(ref).expr(expr).legend_format(legend))
    return panel


def _base(uid: str, title: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["gitmesh"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("utc")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )


def _choice(name: str, label: str, of: str, multi: bool = False) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(_SOURCE)
        .query(f"label_values({prometheus.REQUESTS}, {of})")
        .multi(multi)
        .include_all(multi)
    )


def overview() -> dashboard.Dashboard:
    """Every edge of the mesh: traffic, success, latency, refused calls, bytes."""
    r, ok = prometheus.REQUESTS, prometheus.SUCCESS
    return (
        _base("gitmesh-mesh", "gitmesh: the mesh")
        .with_panel(_panel("Requests per second, per edge", "reqps", [(r, _EDGE)]))
        .with_panel(_panel("Success rate, per edge", "percentunit", [(ok, _EDGE)]))
        .with_panel(_panel("Latency p99, per edge", "ms", [(prometheus.LATENCY[99], _EDGE)]))
        .with_panel(_panel("Errors (5xx) per second, per edge", "reqps", [(prometheus.ERRORS, _EDGE)]))
        .with_panel(_panel("Refused calls per second, per edge", "reqps", [(prometheus.DENIED, _EDGE)]))
        .with_panel(
            _panel(
                "TCP bytes per second, per edge",
                "Bps",
                [(prometheus.SENT, f"{_EDGE} sent"), (prometheus.RECEIVED, f"{_EDGE} received")],
            )
        )
        .with_panel(_panel("Open connections, per edge", "short", [(prometheus.CONNECTIONS, _EDGE)]))
    )


def service() -> dashboard.Dashboard:
    """One service: who calls it (inbound) and what it calls (outbound)."""
    into, out = '{destination="$service"}', '{source="$service"}'
    return (
        _base("gitmesh-service", "gitmesh: a service")
        .with_variable(_choice("service", "Service", "destination"))
        .with_panel(
            _panel(
                "Inbound requests per second, per caller",
                "reqps",
                [(prometheus.REQUESTS + into, "{{source}}")],
            )
        )
        .with_panel(
            _panel(
                "Inbound success rate, per caller", "percentunit", [(prometheus.SUCCESS + into, "{{source}}")]
            )
        )
        .with_panel(
            _panel(
                "Inbound latency",
                "ms",
                [(prometheus.LATENCY[q] + into, f"{{{{source}}}} p{q}") for q in (50, 90, 99)],
                width=24,
            )
        )
        .with_panel(
            _panel("Outbound requests per second", "reqps", [(prometheus.REQUESTS + out, "{{destination}}")])
        )
        .with_panel(
            _panel("Outbound success rate", "percentunit", [(prometheus.SUCCESS + out, "{{destination}}")])
        )
    )


def rollout() -> dashboard.Dashboard:
    """A split's backends side by side, as a rollout shifts traffic between them."""
    backends = '{destination=~"$backends"}'
    requests = f"{prometheus.REQUESTS}{backends}"
    share = f"sum by (destination) ({requests}) / scalar(sum({requests}))"
    # Each caller's success ratio weighted by its requests: the backend's own.
    weighted = f"{prometheus.SUCCESS}{backends} * {requests}"
    success = f"sum by (destination) ({weighted}) / sum by (destination) ({requests})"
    return (
        _base("gitmesh-rollout", "gitmesh: a rollout")
        .with_variable(_choice("backends", "Backends", "destination", multi=True))
        .with_panel(
            _panel("Share of the traffic, per backend", "percentunit", [(share, "{{destination}}")], width=24)
        )
        .with_panel(_panel("Success rate, per backend", "percentunit", [(success, "{{destination}}")]))
        .with_panel(
            _panel("Latency p99, per caller and backend", "ms", [(prometheus.LATENCY[99] + backends, _EDGE)])
        )
    )


def fleet() -> dashboard.Dashboard:
    """The fleet's compliance: how many members in each state, and which are not Compliant when."""
    return (
        _base("gitmesh-fleet", "gitmesh: the fleet")
        .with_panel(_panel("Members per compliance state", "short", [(prometheus.FLEET_STATES, "{{state}}")]))
        .with_panel(
            _panel(
                "Compliant (1) or not (0), per member", "short", [(prometheus.FLEET_COMPLIANT, "{{cluster}}")]
            )
        )
    )


def dashboards() -> dict[str, str]:
    """File name -> the dashboard's JSON model, as committed under ``deploy/dashboards/``."""
    built = (overview().build(), service().build(), rollout().build(), fleet().build())
    return {f"{d.uid}.json": json.dumps(d, cls=JSONEncoder, indent=2, sort_keys=True) + "\n" for d in built}
