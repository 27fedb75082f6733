"""The metrics commands' usage: what they write, and what they refuse."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.metrics import prometheus


def test_metrics_prometheus_writes_the_configuration_the_rules_and_the_sidecars(tmp_path: Path) -> None:
    out = tmp_path / "prom"
    args = ["metrics", "prometheus", "--store", str(tmp_path / "s.db"), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--envoy-admin", "10.0.0.1:15000=shop/front"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    assert config["rule_files"] == [str((out / prometheus.RULES).resolve())]
    assert yaml.safe_load((out / prometheus.RULES).read_text()) == prometheus.rules()
    assert json.loads((out / prometheus.TARGETS).read_text()) == prometheus.targets(
        {"10.0.0.1:15000": "shop/front"}
    )


def test_without_sidecars_to_read_the_views_are_usage_errors(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "s.db")]
    prom = CliRunner().invoke(cli, ["metrics", "prometheus", *store, "--out", str(tmp_path / "p")])
    assert prom.exit_code == 2 and "no sidecars to read" in prom.output
    top = CliRunner().invoke(cli, ["top", *store, "--once"])
    assert top.exit_code == 2 and "no sidecars to read" in top.output
    live_json = CliRunner().invoke(cli, ["top", *store, "-o", "json"])
    assert live_json.exit_code == 2 and "give --once" in live_json.output
