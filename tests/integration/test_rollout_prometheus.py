"""The Prometheus metrics source against Debian's Prometheus, scraping the real sidecars' admin
ports (run directly with a generated config, not as the system service; `make test` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitmesh.demo import Demo, eventually, free_port, stop_process
from gitmesh.plan.policy import Policy
from gitmesh.rollout.model import Phase
from gitmesh.rollout.prometheus import Prometheus, queries
from tests.integration.rollouts import (
    Traffic,
    Webhook,
    demo,
    live_weights,
    roll_out,
    webhook,
)

pytestmark = pytest.mark.integration
__all__ = ["demo", "webhook"]  # fixtures, used by name


@pytest.fixture
def prometheus(demo: Demo, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed: make prometheus (make test does it)")
    admins = [f"127.0.0.1:{s.admin_port}" for s in demo.sidecars.values()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "sidecars",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": admins}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    try:
        eventually(
            lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status, lambda s: s == 200, "ready"
        )
        yield url
    finally:
        stop_process(process)


def test_the_default_queries_read_the_sidecars_metrics(demo: Demo, prometheus: str) -> None:
    with Traffic(demo):
        source = Prometheus(prometheus)
        q = queries(Policy(), "bookstore/bookstore-v1", 5)
        requests = eventually(
            lambda: source.query(q["requests"]), lambda v: (v or 0) > 20, "requests counted"
        )
        assert requests > 20
        assert source.query(q["success-rate"]) == pytest.approx(1.0)
        p99 = eventually(lambda: source.query(q["latency-p99"]), lambda v: v is not None, "latency known")
        assert 0 < p99 < 1000  # in milliseconds: the app answers at once, Envoy counts in ms


def test_half_500s_are_rolled_back_reading_prometheus(
    demo: Demo, prometheus: str, webhook: Webhook, tmp_path: Path
) -> None:
    demo.apps["bookstore-v2"].error_rate = 0.5
    failed, _ = roll_out(demo, webhook, tmp_path, "--prometheus", prometheus)
    assert failed.phase is Phase.FAILED
    assert "success rate" in failed.reason and "below 95%" in failed.reason, failed.reason
    assert failed.analysis is not None
    v2 = failed.analysis.values["bookstore-v2"]
    assert v2["requests"] and v2["requests"] >= 5 and 30 <= (v2["success_rate"] or 0) <= 70, v2
    assert live_weights(demo) == {"bookstore-v1": 100, "bookstore-v2": 0}
