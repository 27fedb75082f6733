"""gitmesh metrics prometheus for real: Debian's promtool checks what it writes, and Debian's
Prometheus, run with that configuration, scrapes the bookstore's real Envoy sidecars and records
the golden signals per edge (run directly, not as the system service; `make test` installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import Demo, eventually, free_port, stop_process
from gitmesh.metrics import prometheus
from tests.integration.rollouts import Traffic, demo

pytestmark = pytest.mark.integration
__all__ = ["demo"]  # fixtures, used by name


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"Debian's {name} is not installed: make prometheus (make test does it)")
    return found


def write(d: Demo, out: Path) -> None:
    args = ["metrics", "prometheus", "--out", str(out), "--scrape-interval", "1s"]
    for name in ("bookbuyer", "bookthief"):
        args += ["--envoy-admin", f"127.0.0.1:{d.sidecars[name].admin_port}={name}/{name}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})) as r:
        result: list[dict[str, Any]] = json.loads(r.read())["data"]["result"]
        return result


def test_promtool_passes_the_configuration_and_the_rules(demo: Demo, tmp_path: Path) -> None:
    write(demo, tmp_path)
    promtool = binary("promtool")
    for check in (["config", "prometheus.yml"], ["rules", prometheus.RULES]):
        done = subprocess.run(
            [promtool, "check", check[0], str(tmp_path / check[1])], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    targets = json.loads((tmp_path / prometheus.TARGETS).read_text())
    assert sorted(t["labels"]["source"] for t in targets) == ["bookbuyer/bookbuyer", "bookthief/bookthief"]


def test_prometheus_records_each_edges_golden_signals(demo: Demo, tmp_path: Path) -> None:
    write(demo, tmp_path)
    address = f"127.0.0.1:{free_port()}"
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    edge = '{source="bookbuyer/bookbuyer",destination="bookstore/bookstore-v1"}'
    refused = '{source="bookthief/bookthief",destination="bookstore/bookstore"}'
    try:
        with Traffic(demo):
            requests = eventually(
                lambda: query(url, f"{prometheus.REQUESTS}{edge}"),
                lambda r: len(r) == 1 and float(r[0]["value"][1]) > 5,
                "the edge's requests recorded",
                timeout=60,
            )
            assert requests[0]["metric"]["source"] == "bookbuyer/bookbuyer"
            (success,) = eventually(
                lambda: query(url, f"{prometheus.SUCCESS}{edge}"), lambda r: len(r) == 1, "success recorded"
            )
            assert float(success["value"][1]) == pytest.approx(1.0)
            (p99,) = eventually(
                lambda: query(url, f"{prometheus.LATENCY[99]}{edge}"),
                lambda r: len(r) == 1 and r[0]["value"][1] != "NaN",
                "p99 recorded",
            )
            assert float(p99["value"][1]) > 0
        # bookthief's calls, refused by its own sidecar: a denied rate on its edge, none on bookbuyer's.
        with Traffic(demo, caller="bookthief"):
            eventually(
                lambda: query(url, f"{prometheus.DENIED}{refused}"),
                lambda r: len(r) == 1 and float(r[0]["value"][1]) > 1,
                "the refused calls recorded",
            )
        assert query(url, f"{prometheus.DENIED}{edge}") == []
        assert [r["value"][1] for r in query(url, f'up{{job="{prometheus.JOB}"}}')] == ["1", "1"]
    finally:
        stop_process(process)
