"""The Grafana dashboards: committed as generated, read back by the SDK's own model, and querying
only series the Prometheus rules record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard

from gitmesh.metrics import dashboards, prometheus

COMMITTED = Path(__file__).resolve().parents[2] / "deploy" / "dashboards"
GENERATED = dashboards.dashboards()


def test_the_committed_dashboards_are_what_generating_gives() -> None:
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == sorted(GENERATED)
    for name, text in GENERATED.items():
        assert (COMMITTED / name).read_text() == text, f"{name}: run gitmesh metrics dashboards"


def exprs(model: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in model["panels"] for t in panel["targets"]]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_each_dashboard_reads_back_into_the_sdks_model(name: str) -> None:
    model = json.loads(GENERATED[name])
    again = json.loads(json.dumps(Dashboard.from_json(model).to_json(), default=lambda o: o.to_json()))
    assert again["uid"] == model["uid"] and exprs(again) == exprs(model)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_query_reads_only_recorded_series(name: str) -> None:
    queries = exprs(json.loads(GENERATED[name]))
    assert queries
    for expr in queries:
        series = set(re.findall(r"gitmesh:[a-z0-9_:]+", expr))
        assert series and series <= set(prometheus.RECORDED) | set(prometheus.RECORDED_FLEET), expr
        assert "envoy_" not in expr, expr  # the raw stats stay behind the rules
