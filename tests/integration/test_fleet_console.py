"""The fleet's compliance as a person sees it: the hub and four members of ``test_fleet``'s fixture,
each followed by its agent, and a third ``gitmesh run --fleet-view`` whose console is opened in real
headless Chromium and whose ``/metrics`` a Prometheus would scrape."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from gitmesh.demo import eventually
from gitmesh.metrics.prometheus import FLEET_COMPLIANCE
from tests.conftest import GitRepo
from tests.controller import RunningController
from tests.integration.test_console import browser, screenshot, text_of
from tests.integration.test_fleet import all_compliant_at, canary, fleet, git_http, prometheus, status
from tests.kube import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
__all__ = ["browser", "canary", "fleet", "git_http", "prometheus"]  # fixtures, used by name


def state_class(browser: webdriver.Chrome, cluster: str) -> str:
    cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-cluster="{cluster}"] td.state')
    return str(cells[0].get_attribute("class")) if cells else ""


def test_the_console_shows_each_members_compliance_and_an_agent_gone_silent(
    fleet: tuple[Cluster, dict[str, Cluster], dict[str, RunningController], GitRepo],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    hub, _, agents, repo = fleet
    head = repo.git("rev-parse", "HEAD").strip()
    eventually(lambda: status(hub), all_compliant_at(head), "every member Compliant", timeout=120)
    workdir = tmp_path / "viewer"
    workdir.mkdir()
    viewer = RunningController(
        workdir, ["--fleet-view", hub.kubeconfig, "--store", workdir / "store.db"]
    ).start()
    try:
        browser.get(f"http://127.0.0.1:{viewer.http_port}/console")
        row = eventually(
            lambda: text_of(browser, 'tr[data-cluster="eu-1"]'), lambda t: "Compliant" in t, "eu-1's row"
        )
        # The revision each agent fetched and the one it applied: the head, on both.
        assert "mesh" in row
        for cell in ("desired", "applied"):
            assert text_of(browser, f'tr[data-cluster="eu-1"] td.{cell}') == head[:12]
        assert "Compliant" in text_of(browser, 'tr[data-cluster="us-1"]')
        assert state_class(browser, "eu-1") == "state good"

        # us-1's agent dies: past its unknownAfter (5s) the open page shows it Unknown, in red.
        agents["us-1"].kill()
        eventually(
            lambda: text_of(browser, 'tr[data-cluster="us-1"] td.state'),
            lambda t: t == "Unknown",
            "us-1 Unknown on the page",
            timeout=60,
        )
        assert state_class(browser, "us-1") == "state bad"
        assert "no report for" in text_of(browser, 'tr[data-cluster="us-1"] td.reason')
        # eu-1's agent reports on: Compliant (under load a report may come late, past the 5 s, and
        # the next one brings it back).
        eventually(
            lambda: text_of(browser, 'tr[data-cluster="eu-1"] td.state'),
            lambda t: t == "Compliant",
            "eu-1 Compliant beside the silent us-1",
            timeout=30,
        )
        screenshot(browser, "section:has(#fleet)", "fleet.png", tmp_path)  # docs/views/fleet.png

        def metrics() -> str:
            code, body = viewer.get("/metrics")
            assert code == 200
            return str(body.decode())

        # As above, eu-1's next report may be late under load: the exposition as soon as it is in.
        exposition = eventually(
            metrics,
            lambda t: f'{FLEET_COMPLIANCE}{{cluster="eu-1",state="Compliant"}} 1.0' in t,
            "eu-1 on /metrics",
        )
        assert f'{FLEET_COMPLIANCE}{{cluster="us-1",state="Unknown"}} 1.0' in exposition
        assert f'{FLEET_COMPLIANCE}{{cluster="us-1",state="Compliant"}} 0.0' in exposition
        assert f'{FLEET_COMPLIANCE}{{cluster="eu-1",state="Compliant"}} 1.0' in exposition
    finally:
        assert viewer.stop() == 0, viewer.log.read_text()
