"""The wave timeline: an SVG of each wave's stages, placed by time and coloured by state."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from gitmesh.fleet.timeline import STAGE_COLOURS, WAVE_COLOURS, render

SVG = "{http://www.w3.org/2000/svg}"
NOW = datetime(2026, 12, 6, 3, 0, 30, tzinfo=UTC)


def stage(name: str, state: str, started: str | None, finished: str | None, *clusters: str) -> dict[str, Any]:
    return {
        "name": name,
        "clusters": list(clusters),
        "revision": "a" * 40,
        "state": state,
        "reason": "",
        "since": finished or started or "2026-12-06T03:00:00Z",
        "started": started,
        "finished": finished,
        "waiting_for": None,
        "wait": None,
        "approval": None,
    }


def wave(
    state: str, *stages: dict[str, Any], reason: str = "", abort: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "configuration": "mesh",
        "revision": "b" * 40,
        "last_good": "a" * 40,
        "state": state,
        "reason": reason,
        "abort": abort,
        "stages": list(stages),
    }


COMPLETED = wave(
    "Completed",
    stage("canary", "Passed", "2026-12-06T03:00:00Z", "2026-12-06T03:00:05Z", "eu-1"),
    stage("eu", "Passed", "2026-12-06T03:00:09Z", "2026-12-06T03:00:12Z", "eu-2"),
    stage("rest", "Passed", "2026-12-06T03:00:12Z", "2026-12-06T03:00:20Z", "us-1", "us-2"),
)


def bars(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {r.get("data-stage", ""): r for r in root.iter(f"{SVG}rect") if r.get("class") == "stage"}


def test_it_is_svg_with_each_stage_its_clusters_and_the_waves_state() -> None:
    svg = render([COMPLETED], NOW)
    root = ET.fromstring(svg)  # well-formed
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"canary", "eu", "rest", "eu-1", "us-1, us-2", "Completed"} <= set(texts)
    assert "mesh toward bbbbbbbbbbbb" in texts
    assert set(bars(svg)) == {"canary", "eu", "rest"}


def test_stages_are_placed_in_time_order_with_widths_by_duration() -> None:
    placed = bars(render([COMPLETED], NOW))
    x = {name: float(r.get("x", "")) for name, r in placed.items()}
    width = {name: float(r.get("width", "")) for name, r in placed.items()}
    assert x["canary"] < x["eu"] < x["rest"]
    assert x["eu"] + width["eu"] == x["rest"]  # rest starts as eu finishes
    assert width["rest"] > width["canary"] > width["eu"]  # 8 s, 5 s, 3 s
    y = {name: float(r.get("y", "")) for name, r in placed.items()}
    assert y["canary"] < y["eu"] < y["rest"]  # one row each, in the wave's order


def test_colours_follow_each_stages_state_and_the_waves() -> None:
    halted = wave(
        "Halted",
        stage("canary", "RolledBack", "2026-12-06T03:00:00Z", "2026-12-06T03:00:04Z", "eu-1"),
        stage("eu", "Pending", None, None, "eu-2"),
        reason="halted at stage canary: eu-1: mesh health failed",
    )
    aborted = wave(
        "Aborted",
        stage("canary", "RolledBack", "2026-12-06T03:00:00Z", "2026-12-06T03:00:04Z", "eu-1"),
        abort={"revision": "b" * 40, "by": "gitmesh-admin", "at": "2026-12-06T03:00:03Z"},
    )
    waiting = wave(
        "WaitingApproval",
        stage("canary", "Passed", "2026-12-06T03:00:00Z", "2026-12-06T03:00:04Z", "eu-1"),
        stage("eu", "WaitingApproval", None, None, "eu-2"),
        stage("rest", "Verifying", "2026-12-06T03:00:20Z", None),
    )
    for one, badge in ((halted, "Halted"), (aborted, "Aborted"), (waiting, "WaitingApproval")):
        svg = render([one], NOW)
        assert f"fill='{WAVE_COLOURS[badge]}'" in svg
        placed = bars(svg)
        for s in one["stages"]:
            colour = STAGE_COLOURS[s["state"]]
            rect = placed[s["name"]]
            assert colour in (rect.get("fill"), rect.get("stroke")), (s["name"], rect.attrib)
    assert "halted at stage canary: eu-1: mesh health failed" in render([halted], NOW)
    assert "aborted by gitmesh-admin" in render([aborted], NOW)
    not_started = bars(render([halted], NOW))["eu"]
    assert not_started.get("fill") == "white" and not_started.get("stroke-dasharray")
    under_way = bars(render([waiting], NOW))["rest"]  # runs to now: 10 s after its start
    assert float(under_way.get("width", "")) > 0


def test_panels_stack_and_names_are_escaped() -> None:
    odd = wave("Completed", stage("a<b>&'c", "Passed", "2026-12-06T03:00:00Z", "2026-12-06T03:00:01Z"))
    svg = render([COMPLETED, odd], NOW)
    ET.fromstring(svg)
    assert "a<b>&'c" in bars(svg)
    heights = [float(h) for h in re.findall(r"<svg[^>]* height='([0-9.]+)'", svg)]
    assert heights and heights[0] > float(re.findall(r"height='([0-9.]+)'", render([COMPLETED], NOW))[0])
