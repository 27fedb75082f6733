"""The console's page, from views made here: layout, split shares, what is escaped, what is capped."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from gitmesh.controller import console
from gitmesh.demo import free_port
from gitmesh.mesh.state import (
    Backend,
    HttpMatch,
    Identity,
    MeshState,
    Permission,
    RetryPolicy,
    ServiceRef,
    Split,
)
from gitmesh.metrics.model import Edge
from gitmesh.state.records import Condition, Reconcile, SourceRecord

EMPTY = MeshState({}, frozenset(), {}, ())


def edge(
    source: str, destination: str, rps: float = 10.0, success: float | None = 100.0, denied: float = 0.0
) -> Edge:
    return Edge(source, destination, rps, success, 1.0, 2.0, 3.0, 1.0, 0.0, 0.0, denied)


def view(edges: list[Edge], **kw: Any) -> console.View:
    return console.View(
        **(
            {
                "at": 0.0,
                "seconds": 2.0,
                "sidecars": 3,
                "rollouts": [],
                "records": [],
                "report": {},
                "mesh": EMPTY,
            }
            | kw
        ),
        edges=edges,
    )


def test_the_graph_names_each_service_once_and_each_edge_its_two_ends_for_the_layout() -> None:
    edges = [edge("a/buyer", "a/store"), edge("a/store", "a/db"), edge("", "a/db")]
    drawn = console.graph(edges, {})
    nodes = dict(re.findall(r'<g class="node" data-node="(n\d+)"><rect rx="4"/><text>([^<]*)</text>', drawn))
    assert sorted(nodes.values()) == ["?", "a/buyer", "a/db", "a/store"]
    key = {name: n for n, name in nodes.items()}
    ends = re.findall(r'data-edge="[^"]*" data-from="(n\d+)" data-to="(n\d+)"><path/><text>', drawn)
    assert ends == [(key["a/buyer"], key["a/store"]), (key["a/store"], key["a/db"]), (key["?"], key["a/db"])]
    assert 'data-layout="pending"' in drawn  # the page's script places it


def test_a_split_backends_share_is_of_what_that_caller_sent_to_the_split() -> None:
    root = ServiceRef("shop", "store")
    backends = (Backend(ServiceRef("shop", "store-v1"), 50), Backend(ServiceRef("shop", "store-v2"), 50))
    mesh = MeshState({}, frozenset(), {(root, 80): Split(root, 80, backends)}, ())
    edges = [
        edge("shop/buyer", "shop/store-v1", 30),
        edge("shop/buyer", "shop/store-v2", 10),
        edge("shop/thief", "shop/store-v2", 5),
        edge("shop/buyer", "shop/db", 100),
    ]
    assert console.shares(edges, mesh) == {
        ("shop/buyer", "shop/store-v1"): 75.0,
        ("shop/buyer", "shop/store-v2"): 25.0,
        ("shop/thief", "shop/store-v2"): 100.0,
    }


def test_names_are_escaped_and_the_page_runs_only_its_own_scripts() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    now = datetime.datetime.now(datetime.UTC)
    record = SourceRecord(
        hostile,
        (Condition("Ready", False, "ApplyFailed", hostile, now),),
        "abc",
        "abc",
        (Reconcile("abc", "main", now, 0.1, "failed", hostile, "start"),),
    )
    nack = {"proxy": hostile, "type": "Listener", "version": "7", "message": hostile, "at": 0.0}
    report = {"proxies": [hostile], "nacks": [nack]}
    page = console.page(
        console.fragments(
            view([edge(hostile, "a/b")], records=[record], unreachable={hostile: hostile}, report=report)
        )
    )
    assert hostile not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert re.findall(r"<script[^>]*>", page) == [
        '<script src="/console/assets/elk.js" defer>',
        '<script src="/console/assets/uplot.js" defer>',
        '<script src="/console/console.js" defer>',
    ]
    sent = console.event(console.fragments(view([edge(hostile, "a/b")])))
    assert sent.startswith(b"event: view\ndata: ") and sent.endswith(b"\n\n") and sent.count(b"\n") == 3
    assert set(json.loads(sent.split(b"data: ", 1)[1])) == set(console.fragments(view([])))
    assert set(console.fragments(view([]))) == {"status", "edges", "rollouts", "sources", "proxies", "mesh"}


def test_a_large_mesh_shows_its_worst_edges_and_says_how_many_more() -> None:
    edges = [edge(f"ns/s{i}", f"ns/d{i}", success=50.0 if i < 3 else 100.0) for i in range(500)]
    parts = console.fragments(view(edges))
    assert parts["edges"].count("<tr class=") == console.EDGES_SHOWN
    assert f"{500 - console.EDGES_SHOWN} more edges" in parts["edges"]
    assert parts["edges"].count('<g class="edge') == console.EDGES_DRAWN
    assert 'data-edge="ns/s0 ns/d0"' in parts["edges"]


def test_stats_that_cannot_be_read_are_said_and_one_reading_serves_every_viewer() -> None:
    asked: list[int] = []

    def rollouts() -> dict[str, object]:
        asked.append(1)
        return {}

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    c = console.Console(lambda: {"sidecars": {dead: "a/b"}}, rollouts, lambda: [], lambda: EMPTY)  # type: ignore[arg-type,return-value]
    first = c.view()
    assert c.view() is first and len(asked) == 1
    assert c.fragments() is c.fragments()
    assert first.edges == [] and first.sidecars == 0 and list(first.unreachable) == [dead]
    status = console.fragments(first)["status"]
    assert f"1 unreachable: {dead} (a/b: cannot read the Envoy stats" in status and 'class="bad' in status
    assert console.fragments(first)["edges"] == "<p>No stats.</p>"


def test_a_refused_edge_is_dashed_red_and_its_rate_is_in_the_table() -> None:
    edges = [
        edge("shop/front", "shop/web"),
        edge("shop/thief", "shop/web", rps=0.0, success=None, denied=2.5),
    ]
    parts = console.fragments(view(edges))["edges"]
    (drawn,) = re.findall(r'<g class="edge denied" data-edge="shop/thief shop/web" .*?</g>', parts)
    assert ">2.5 rps denied</text>" in drawn  # nothing got through: that alone
    assert '<g class="edge good" data-edge="shop/front shop/web" ' in parts
    (row,) = re.findall(r'<tr class="denied" data-edge="shop/thief shop/web">.*?</tr>', parts)
    assert '<td class="denied">2.5</td>' in row and "<th>denied</th>" in parts
    css = console.static("console.css").decode()
    assert re.search(r"svg\.graph \.denied path \{[^}]*stroke: #d62728;[^}]*stroke-dasharray", css)


def test_rejected_configurations_are_listed_newest_first_and_none_is_said_too() -> None:
    assert "No configuration rejected." in console.fragments(view([], report={"proxies": ["a"]}))["proxies"]
    nacks = [
        {"proxy": "p1", "type": "Listener", "version": "1", "message": "msg-old", "at": 10.0},
        {"proxy": "p2", "type": "Cluster", "version": "2", "message": "msg-new", "at": 20.0, "patches": []},
    ]
    shown = console.fragments(view([], report={"proxies": ["p1", "p2"], "nacks": nacks}))["proxies"]
    assert "2 rejected (NACK)" in shown and shown.index("msg-new") < shown.index("msg-old")


def test_who_may_call_whom_the_splits_and_the_policies_are_shown() -> None:
    buyer, store = Identity("shop", "buyer"), Identity("shop", "store")
    root = ServiceRef("shop", "store")
    match = HttpMatch("store-routes", "buy", "/buy", ("GET",), ())
    backends = (Backend(ServiceRef("shop", "store-v1"), 75), Backend(ServiceRef("shop", "store-v2"), 25))
    mesh = MeshState(
        {},
        frozenset({buyer, store}),
        {(root, 80): Split(root, 80, backends)},
        (Permission(buyer, store, (match,)),),
        retries=(RetryPolicy(buyer, root, "5xx", 3, 100, 25),),
    )
    shown = console.fragments(view([], mesh=mesh))["mesh"]
    assert (
        '<tr data-identity="shop/store"><td>shop/store</td><td>shop/buyer (store-routes/buy)</td></tr>'
        in shown
    )
    assert "shop/store:80</td><td>store-v1 75%  store-v2 25%" in shown
    assert "shop/buyer retries shop/store on 5xx up to 3 times" in shown
    assert "Permissive" not in shown
    permissive = MeshState({}, frozenset(), {}, (), permissive=True)
    assert "Permissive" in console.fragments(view([], mesh=permissive))["mesh"]


def test_the_live_mesh_is_read_again_only_when_the_objects_version_moves() -> None:
    version, reads = ["1"], []

    def objects() -> list[dict[str, Any]]:
        reads.append(version[0])
        return []

    mesh = console.LiveMesh(lambda: version[0], objects)
    first = mesh()
    assert mesh() is first and reads == ["1"]
    version[0] = "2"
    mesh()
    assert reads == ["1", "2"]
