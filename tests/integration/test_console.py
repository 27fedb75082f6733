"""The web console as a person sees it: the bookstore with real Envoy sidecars, traffic, and
``gitmesh run`` following the demo repo, its console opened in a real headless Chromium (Debian's
chromium and chromium-driver, driven by selenium). The page is read as it is shown, without reloads:
its numbers must move with the traffic.

With ``CONSOLE_SCREENSHOTS=DIR`` each view is also saved there, cropped to its section: the README's
pictures (docs/views/)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from gitmesh import demo as demo_mod
from gitmesh.cluster.port import Changes
from gitmesh.demo import eventually, free_port
from gitmesh.settings import embedded
from tests.bookstore import Bookstore
from tests.integration.rollouts import (
    POLICY,
    SPLIT,
    Traffic,
    Webhook,
    apply_head,
    commit_split,
    webhook,
)

pytestmark = pytest.mark.integration
__all__ = ["webhook"]  # a fixture, used by name

V1 = "bookbuyer/bookbuyer bookstore/bookstore-v1"
V2 = "bookbuyer/bookbuyer bookstore/bookstore-v2"
THIEF = "bookthief/bookthief bookstore/bookstore"  # no TrafficTarget names bookthief: refused
# A rollout that stays at its first step (10% to v2) for the whole test: its next check is minutes away.
HELD = POLICY | {"interval": "10m", "progress-deadline": "20m"}


class ConsoleBookstore(Bookstore):
    """The bookstore, with gitmesh run following the demo repo as source ``demo`` and serving its
    HTTP port (and so the console)."""

    def __init__(self, workdir: Path) -> None:
        self.http_port = free_port()
        super().__init__(workdir)

    def run_options(self) -> list[str]:
        self.token = self.workdir / "token"
        self.token.write_text("console-test-token\n")
        follow = [
            "--http-token-file",
            str(self.token),
            "--repo",
            str(self.repo),
            "--path",
            demo_mod.MESH_PATH,
            "--source",
            "demo",
            "--interval",
            "1h",
        ]
        return [*super().run_options(), *follow, "--http-address", f"127.0.0.1:{self.http_port}"]

    def reconcile(self) -> None:
        """What ``gitmesh reconcile demo`` asks: gitmesh run applies the repo's head now."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/sources/demo/reconcile",
            method="POST",
            headers={"Authorization": f"Bearer {self.token.read_text().strip()}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/console"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[ConsoleBookstore]:
    d = ConsoleBookstore(tmp_path)
    try:
        d.start()
        commit_split(d, 100, 0, message="v1 only, under a rollout policy")
        d.applied = d.apply()
        yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        d.close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if shutil.which("chromedriver") is None:
        pytest.fail("chromium-driver is not installed: make chromium (make test does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="gitmesh-chromium-")
    # Headless, and nothing that reaches beyond this machine (its network is closed).
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def cells(browser: webdriver.Chrome, edge: str) -> dict[str, str] | None:
    """The edge's row as the page shows it now (class -> text), None while it is not on the page."""
    try:
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-edge="{edge}"]')
        return {
            c: row.find_element(By.CLASS_NAME, c).text for c in ("rps", "share", "success", "denied", "p99")
        }
    except (NoSuchElementException, StaleElementReferenceException):  # swapped in anew meanwhile
        return None


def denied_edge(browser: webdriver.Chrome, edge: str) -> tuple[str, str, str, str] | None:
    """How the graph draws an edge with refused calls (its line's stroke and dashes, its label) and
    its row's class; None while no such edge is drawn."""
    try:
        drawn = browser.find_element(
            By.CSS_SELECTOR, f'svg.graph[data-layout="done"] g.edge.denied[data-edge="{edge}"]'
        )
        line = drawn.find_element(By.TAG_NAME, "path")
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-edge="{edge}"]')
        return (
            line.value_of_css_property("stroke"),
            line.value_of_css_property("stroke-dasharray"),
            drawn.text,
            row.get_attribute("class") or "",
        )
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def screenshot(browser: webdriver.Chrome, selector: str, name: str, tmp_path: Path) -> None:
    """The element the CSS selector finds, cropped to it, in tmp_path; and in $CONSOLE_SCREENSHOTS
    when set. Found anew if the page swapped it out meanwhile."""
    shot = tmp_path / name

    def taken() -> bool:
        try:
            browser.find_element(By.CSS_SELECTOR, selector).screenshot(str(shot))
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    eventually(taken, bool, f"a screenshot of {selector}", timeout=10)
    assert shot.read_bytes().startswith(b"\x89PNG")
    if published := os.environ.get("CONSOLE_SCREENSHOTS"):
        Path(published).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(published) / name)


def labels(browser: webdriver.Chrome) -> list[dict[str, float]]:
    """Where the graph's edge labels are drawn (x, y, width, height), once the layout library has placed
    them; [] while swapped out."""
    try:
        return [
            t.rect
            for t in browser.find_elements(By.CSS_SELECTOR, 'svg.graph[data-layout="done"] g.edge text')
        ]
    except StaleElementReferenceException:
        return []


def boxes_of(browser: webdriver.Chrome) -> list[dict[str, float]]:
    """Where the graph's service boxes are drawn, once placed; [] while swapped out."""
    try:
        return [
            r.rect
            for r in browser.find_elements(By.CSS_SELECTOR, 'svg.graph[data-layout="done"] g.node rect')
        ]
    except StaleElementReferenceException:
        return []


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def number(text: str) -> float:
    return float(text.rstrip("%ms"))


def text_of(browser: webdriver.Chrome, selector: str) -> str:
    try:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_a_person_sees_the_edges_move_with_traffic_and_the_rollout_weights(
    demo: ConsoleBookstore, webhook: Webhook, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    commit_split(demo, 0, 100, policy=HELD)
    apply_head(demo, webhook)  # v2 gets 10% at once; the next step is 10 minutes away
    browser.get(demo.console)
    assert browser.title == "gitmesh console"
    # Source "demo": gitmesh run reconciled the repo's head when it started, and found it applied.
    source = eventually(
        lambda: text_of(browser, 'article[data-source="demo"]'), lambda t: "Ready" in t, "the source"
    )
    assert "ReconciliationSucceeded" in source

    with Traffic(demo), Traffic(demo, caller="bookthief"):
        busy = eventually(
            lambda: (cells(browser, V1), cells(browser, V2), cells(browser, THIEF)),
            lambda c: None not in c and number(c[0]["rps"]) > 5 and number(c[2]["denied"]) > 1,
            "bookbuyer's calls to both backends and bookthief's refused ones on the page",
            timeout=60,
        )
        # The bookthief edge shows denied: drawn dashed red, labelled with its refused rate, and its row
        # in the table marked so.
        stroke, dashes, label, row = eventually(
            lambda: denied_edge(browser, THIEF), lambda d: d is not None, "the refused edge drawn"
        )
        browser.save_screenshot(str(tmp_path / "console.png"))
        screenshot(browser, "svg.graph", "graph.png", tmp_path)
        screenshot(browser, "table.edges", "edges.png", tmp_path)
        boxes = eventually(lambda: labels(browser), lambda b: len(b) == 3, "the graph's three labels")
        services = eventually(lambda: boxes_of(browser), lambda b: len(b) == 5, "the graph's five services")
        screenshot(browser, "section:has(#mesh)", "access.png", tmp_path)
    assert stroke == "rgb(214, 39, 40)" and dashes not in ("", "none"), (stroke, dashes)
    assert "rps denied" in label and "denied" in row.split()
    v1, v2, thief = busy
    assert number(v1["success"]) == 100 and number(v2["success"]) == 100
    assert number(v1["denied"]) == 0 and number(thief["rps"]) == 0 and thief["success"] == "-"
    # The split's shares as measured: most of it to v1, some to v2 (10% by weight).
    assert 0 < number(v2["share"]) < 30 < number(v1["share"])
    assert number(v1["p99"]) > 0
    rollout = text_of(browser, f'article[data-split="{SPLIT}"]')
    assert "Progressing" in rollout and "step 1 of 2" in rollout
    assert "bookstore-v1 90%" in rollout and "bookstore-v2 10%" in rollout
    # Who may call the bookstore: bookbuyer, on its routes; bookthief is not among them.
    access = text_of(browser, 'tr[data-identity="bookstore/bookstore"]')
    assert (
        "bookbuyer/bookbuyer (bookstore-service-routes/books-bought" in access and "bookthief" not in access
    )
    assert "bookstore-v1 90%" in text_of(browser, "table.splits")
    # The graph draws the same edges: the two backends as boxes, the calls to them as lines.
    graph = text_of(browser, "svg.graph")
    assert "bookstore/bookstore-v1" in graph and "bookstore/bookstore-v2" in graph
    # Laid out by the layout library: every label readable, every box apart, no label over a box.
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), boxes
    assert not any(overlap(a, b) for i, a in enumerate(services) for b in services[i + 1 :]), services
    assert not any(overlap(a, b) for a in boxes for b in services), (boxes, services)
    assert all(b["width"] > 60 and b["height"] > 20 for b in services), services

    # The traffic has stopped: without a reload, the page says so within a refresh or two.
    eventually(
        lambda: cells(browser, V1),
        lambda c: c is None or number(c["rps"]) == 0,
        "bookbuyer's calls gone from the page",
        timeout=20,
    )
    assert (tmp_path / "console.png").read_bytes().startswith(b"\x89PNG")


def reconciles(browser: webdriver.Chrome) -> list[list[str]]:
    """The demo source's last reconciles as the page lists them (their cells' text), newest first."""
    try:
        rows = browser.find_elements(By.CSS_SELECTOR, 'article[data-source="demo"] tbody tr')
        return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    except StaleElementReferenceException:
        return []


def test_the_bookstore_split_shows_its_shares_as_measured(
    demo: ConsoleBookstore, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(demo.console)
    commit_split(demo, 75, 25, policy={})  # the example's own split, no rollout: the weights at once
    demo.reconcile()  # gitmesh run applies it, asked as gitmesh reconcile asks
    # The sources: the reconcile asked for, above the one at start, with its plan's summary.
    newest, *older = eventually(
        lambda: reconciles(browser), lambda r: len(r) >= 2, "the reconcile asked for on the page"
    )
    assert newest[1:4] == ["manual", demo.head()[:12], "applied"], newest
    assert newest[4].startswith("0 to create, 1 to update, 0 to delete"), newest  # the split
    assert older[-1][1] == "start", older
    screenshot(browser, "section:has(#sources)", "sources.png", tmp_path)
    with Traffic(demo, workers=2):
        v1, v2 = eventually(
            lambda: (cells(browser, V1), cells(browser, V2)),
            lambda c: None not in c and number(c[0]["rps"]) + number(c[1]["rps"]) > 20,
            "bookbuyer's calls to both backends on the page",
            timeout=60,
        )
    assert v1 is not None and v2 is not None
    assert 60 <= number(v1["share"]) <= 90 and 10 <= number(v2["share"]) <= 40
    assert abs(number(v1["share"]) + number(v2["share"]) - 100) < 0.2
    assert "No rollouts." in text_of(browser, "#rollouts")
    splits = text_of(browser, "table.splits")
    assert "bookstore-v1 75%" in splits and "bookstore-v2 25%" in splits


def pointed_at_end(browser: webdriver.Chrome, chart: str) -> dict[str, str]:
    """The chart's legend (series -> value) with the mouse at the chart's right end; {} while the
    chart is swapped out."""
    try:
        over = browser.find_element(By.CSS_SELECTOR, f"{chart} .u-over")
        ActionChains(browser).move_to_element_with_offset(over, over.size["width"] // 2 - 2, 0).perform()
        return {
            row.find_element(By.CLASS_NAME, "u-label").text: row.find_element(By.CLASS_NAME, "u-value").text
            for row in browser.find_elements(By.CSS_SELECTOR, f"{chart} .u-legend .u-series")
        }
    except (NoSuchElementException, StaleElementReferenceException):
        return {}


def test_a_failed_rollout_shows_on_the_open_page(
    demo: ConsoleBookstore, webhook: Webhook, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """gitmesh run walks the rollout itself, from its sidecars' stats; v2 fails half its requests."""
    demo.apps["bookstore-v2"].error_rate = 0.5
    browser.get(demo.console)
    commit_split(demo, 0, 100)
    seen: list[float] = []  # v2's success rate each time the page showed its edge

    def rollout() -> str:
        v2 = cells(browser, V2)
        if v2 is not None and v2["success"] != "-":
            seen.append(number(v2["success"]))
        return text_of(browser, f'article[data-split="{SPLIT}"]')

    with Traffic(demo):
        apply_head(demo, webhook)
        shown = eventually(rollout, lambda t: "Failed" in t, "the failed rollout on the page", timeout=90)
        browser.save_screenshot(str(tmp_path / "console-failed.png"))
        screenshot(browser, "section:has(#rollouts)", "rollout-failed.png", tmp_path)
    assert "bookstore-v1 100%" in shown and "bookstore-v2 0%" in shown
    assert seen and min(seen) < 90  # while v2 had its 10%, the page showed it failing
    # Its timeline, charted by the chart library: each backend's weight and v2's checks; pointing at
    # the end of the chart gives the weights it ended on.
    chart = f'article[data-split="{SPLIT}"] div.timeline[data-charted="yes"]'
    legend = eventually(lambda: text_of(browser, f"{chart} .u-legend"), bool, "the timeline's legend")
    for series in ("bookstore-v1 weight", "bookstore-v2 weight", "bookstore-v2 success rate"):
        assert series in legend, legend
    values = eventually(
        lambda: pointed_at_end(browser, chart),
        lambda v: v.get("bookstore-v1 weight") == "100",
        "the weights at the chart's end under the cursor",
    )
    assert values["bookstore-v2 weight"] == "0", values


def test_a_configuration_a_sidecar_rejects_shows_on_the_open_page(
    demo: ConsoleBookstore, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(demo.console)
    assert "No configuration rejected." in text_of(browser, "#proxies")
    # Past validation, straight into the store: a route group whose path pattern does not compile.
    store = embedded(demo.store)
    try:
        (routes,) = [
            live.obj for ref, live in store.objects.list().items() if ref.name == "bookstore-service-routes"
        ]
        routes["spec"]["matches"][0]["pathRegex"] = "/books-bought("
        store.write("vandal", None, "", Changes(writes=(routes,)))
    finally:
        store.close()
    shown = eventually(
        lambda: text_of(browser, "#proxies"), lambda t: "NACK" in t, "the rejection on the page"
    )
    browser.save_screenshot(str(tmp_path / "console-nack.png"))
    screenshot(browser, "section:has(#proxies)", "proxies-nack.png", tmp_path)
    assert "RouteConfiguration" in shown and "bookstore/bookstore" in shown
    assert "missing )" in shown  # RE2's own words, as Envoy passed them on
