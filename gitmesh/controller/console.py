"""The web console on the controller's HTTP port: the mesh's service edges (a graph and a table with
requests per second, split shares, success rate, latency and the calls the mesh refused), the
rollouts with their weights over time, and each source's reconcile state. Read-only, and open like
``/status``.

The HTML is rendered here; the page's script (``console.js``, beside this file) swaps in the
fragments that ``/console/events`` sends as server-sent events, and has the service graph laid out
by ELK and each rollout's timeline charted by uPlot (``assets/``, fetched by ``make``:
tools/fetch_assets.py). Every viewer shares one reading of the sidecars' stats per REFRESH, taken
only while someone is watching.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gitmesh.apis import read
from gitmesh.controller.metrics import Fleet, FleetMember
from gitmesh.mesh.state import MeshState
from gitmesh.metrics import envoy, model
from gitmesh.rollout import render
from gitmesh.rollout.model import Rollout
from gitmesh.state.records import SourceRecord

REFRESH = 2.0  # seconds between readings of the sidecars' stats, and between events on a stream
# What a person can read, worst first; a mesh of 1,000 services has some 5,000 edges.
EDGES_SHOWN = 200  # in the table
EDGES_DRAWN = 40  # in the graph
ROLLOUTS_SHOWN = 6  # those under way first, then the latest to end
RECONCILES_SHOWN = 5  # per source, newest first
PROXIES_SHOWN = 50
STATIC = {  # file -> content type, served from the package: no CDN, no build step
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    # The graph's layout library and the charts', fetched pinned from the npm registry (assets.json).
    "assets/elk.js": "text/javascript; charset=utf-8",
    "assets/uplot.js": "text/javascript; charset=utf-8",
    "assets/uplot.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class View:
    """What the console shows at one moment."""

    at: float  # wall-clock time of the reading
    seconds: float  # the window the edges were measured over (0: one reading so far)
    sidecars: int
    edges: Sequence[model.Edge]
    rollouts: Sequence[Rollout]
    records: Sequence[SourceRecord]
    report: Mapping[str, Any]  # the ADS server's: connected proxies, the configurations they rejected
    mesh: MeshState  # what is live: who may call whom, the splits, the policies
    unreachable: Mapping[str, str] = field(default_factory=dict)  # sidecars not read: admin -> why
    fleet: Sequence[FleetMember] | None = None  # the fleet's members, when a hub is shown
    fleet_error: str = ""  # why the hub could not be read, when it could not


class Console:
    """The latest view, read anew at most every REFRESH seconds, whoever asks. ``report()`` is the ADS
    server's latest report (``serve.xds_report``): the stats are read from its sidecars."""

    def __init__(
        self,
        report: Callable[[], Mapping[str, Any]],
        rollouts: Callable[[], Mapping[str, Rollout]],
        records: Callable[[], list[SourceRecord]],
        mesh: Callable[[], MeshState],
        fleet: Fleet | None = None,
    ) -> None:
        self.report = report
        self.fleet = fleet
        self.mesh = mesh
        self.stats = envoy.EnvoyStats(lambda: report().get("sidecars", {}))
        self.rollouts = rollouts
        self.records = records
        self._lock = threading.Lock()
        self._reading: tuple[float, dict[str, model.Sidecar]] | None = None
        self._view: tuple[float, View] | None = None
        self._rendered: tuple[View, dict[str, str]] | None = None

    def view(self) -> View:
        with self._lock:
            now = time.monotonic()
            if self._view is not None and now - self._view[0] < REFRESH:
                return self._view[1]
            edges: list[model.Edge] = []
            seconds = 0.0
            available = self.stats.read_available()  # a sidecar that cannot be read hides no other
            reading = available.carried(self._reading[1] if self._reading else {})
            if self._reading is not None:
                seconds = now - self._reading[0]
                edges = model.edges(model.window(reading, self._reading[1]), seconds)
            self._reading = (now, reading)
            shown = sorted(self.rollouts().values(), key=lambda r: (not r.phase.active, -r.started_at))
            view = View(
                time.time(),
                seconds,
                len(available.read),
                edges,
                shown[:ROLLOUTS_SHOWN],
                self.records(),
                self.report(),
                self.mesh(),
                available.unreachable,
                self.fleet.members() if self.fleet else None,
                self.fleet.error if self.fleet else "",
            )
            self._view = (now, view)
            return view

    def fragments(self) -> dict[str, str]:
        """The latest view's fragments, rendered once per view however many watch."""
        view = self.view()
        with self._lock:
            if self._rendered is None or self._rendered[0] is not view:
                self._rendered = (view, fragments(view))
            return self._rendered[1]


class LiveMesh:
    """The mesh read from the live objects, read again only once their version has moved."""

    def __init__(
        self, version: Callable[[], str], objects: Callable[[], Iterable[Mapping[str, Any]]]
    ) -> None:
        self.version = version
        self.objects = objects
        self._read: tuple[str, MeshState] | None = None

    def __call__(self) -> MeshState:
        version = self.version()  # before the objects: a change in between is read again next time
        if self._read is None or self._read[0] != version:
            self._read = (version, read.mesh(self.objects()))
        return self._read[1]


def static(name: str) -> bytes:
    return (resources.files(__package__) / name).read_bytes()


def page(parts: Mapping[str, str]) -> str:
    fleet = (
        f'<section><h2>Fleet</h2><div id="fleet">{parts["fleet"]}</div></section>' if "fleet" in parts else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gitmesh console</title>
<link rel="stylesheet" href="/console/assets/uplot.css">
<link rel="stylesheet" href="/console/console.css">
<script src="/console/assets/elk.js" defer></script>
<script src="/console/assets/uplot.js" defer></script>
<script src="/console/console.js" defer></script>
</head>
<body>
<header><h1>gitmesh</h1><span id="status">{parts["status"]}</span></header>
<section><h2>Service edges</h2><div id="edges">{parts["edges"]}</div></section>
<section><h2>Rollouts</h2><div id="rollouts">{parts["rollouts"]}</div></section>
<section><h2>Access and policies</h2><div id="mesh">{parts["mesh"]}</div></section>
<section><h2>Sources</h2><div id="sources">{parts["sources"]}</div></section>
<section><h2>Proxies</h2><div id="proxies">{parts["proxies"]}</div></section>
{fleet}
</body>
</html>
"""


def event(parts: Mapping[str, str]) -> bytes:
    """One server-sent event carrying fragments (element id -> its HTML)."""
    return b"event: view\ndata: " + json.dumps(parts).encode() + b"\n\n"


def fragments(view: View) -> dict[str, str]:
    parts = {
        "status": _status(view),
        "edges": _edges(view),
        "rollouts": _rollouts(view.rollouts),
        "sources": _sources(view.records),
        "proxies": _proxies(view.report),
        "mesh": _mesh(view.mesh),
    }
    if view.fleet is not None:
        parts["fleet"] = _fleet(view.fleet, view.at, view.fleet_error)
    return parts


def _e(text: object) -> str:
    return html.escape(str(text))


def _number(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def _status(view: View) -> str:
    when = time.strftime("%H:%M:%S", time.gmtime(view.at))
    measured = f"last {view.seconds:.1f}s" if view.seconds else "measuring"
    text = f"{view.sidecars} sidecars, {measured}, at {when} UTC"
    if view.unreachable:
        named = "; ".join(f"{admin} ({why})" for admin, why in sorted(view.unreachable.items()))
        said = f"{len(view.unreachable)} unreachable: {named}"
        return f'{_e(text)} <span class="bad">{_e(said)}</span>'
    return _e(text)


def _health(e: model.Edge) -> str:
    """The class an edge is drawn in: refused calls before its success rate."""
    if e.denied_rps > 0:
        return "denied"
    if e.success_rate is None:
        return "idle"
    return "good" if e.success_rate >= 99 else "warn" if e.success_rate >= 95 else "bad"


def shares(edges: Sequence[model.Edge], mesh: MeshState) -> dict[tuple[str, str], float]:
    """Each split backend's measured share (percent) of what its caller sent to that split."""
    into: dict[str, list[model.Edge]] = {}  # destination -> the edges into it: one pass over the edges
    for e in edges:
        into.setdefault(e.destination, []).append(e)
    out: dict[tuple[str, str], float] = {}
    for split in mesh.splits.values():
        by_source: dict[str, list[model.Edge]] = {}
        for backend in dict.fromkeys(str(b.service) for b in split.backends):
            for e in into.get(backend, ()):
                by_source.setdefault(e.source, []).append(e)
        for group in by_source.values():
            total = sum(e.rps for e in group)
            for e in group:
                out[(e.source, e.destination)] = 100 * e.rps / total if total else 0.0
    return out


def _edges(view: View) -> str:
    if not view.edges:
        return "<p>No traffic measured yet.</p>" if view.sidecars else "<p>No stats.</p>"
    share = shares(view.edges, view.mesh)
    shown = view.edges[:EDGES_SHOWN]
    rows = "".join(
        f'<tr class="{_health(e)}" data-edge="{_e(e.source)} {_e(e.destination)}">'
        f"<td>{_e(e.source or '-')}</td><td>{_e(e.destination)}</td>"
        f'<td class="rps">{e.rps:.1f}</td>'
        f'<td class="share">{_number(share.get((e.source, e.destination)), "%")}</td>'
        f'<td class="success">{_number(e.success_rate, "%")}</td>'
        f'<td class="denied">{e.denied_rps:.1f}</td>'
        f"<td>{_number(e.p50_ms, 'ms')}</td><td>{_number(e.p90_ms, 'ms')}</td>"
        f'<td class="p99">{_number(e.p99_ms, "ms")}</td><td>{e.connections:.0f}</td></tr>'
        for e in shown
    )
    more = len(view.edges) - len(shown)
    rest = f"<p>{more} more edges, none worse than these.</p>" if more else ""
    head = "".join(
        f"<th>{c}</th>"
        for c in ("source", "destination", "RPS", "share", "success", "denied", "p50", "p90", "p99", "conns")
    )
    return (
        graph(view.edges[:EDGES_DRAWN], share)
        + f'<table class="edges"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{rest}'
    )


def graph(edges: Sequence[model.Edge], share: Mapping[tuple[str, str], float]) -> str:
    """The services as boxes, each edge a line coloured by its success rate and labelled with its
    requests per second (and share of its split); an edge with refused calls is dashed red and says
    how many. Drawn unplaced: the page's script has the layout library (ELK, layered) place the
    boxes, route the lines and put each label where no other is."""
    nodes = {
        n: f"n{i}" for i, n in enumerate(sorted({n for e in edges for n in (e.source or "?", e.destination)}))
    }
    out = ['<svg class="graph" role="img" aria-label="service graph" data-layout="pending">']
    for e in edges:
        label = f"{e.rps:.1f} rps {_number(e.success_rate, '%')}"
        if (e.source, e.destination) in share:
            label += f" ({share[(e.source, e.destination)]:.0f}%)"
        if e.denied_rps > 0:  # all of it when nothing got through
            denied = f"{e.denied_rps:.1f} rps denied"
            label = f"{label} {denied}" if e.rps else denied
        out.append(
            f'<g class="edge {_health(e)}" data-edge="{_e(e.source)} {_e(e.destination)}" '
            f'data-from="{nodes[e.source or "?"]}" data-to="{nodes[e.destination]}">'
            f"<path/><text>{_e(label)}</text></g>"
        )
    for node, key in nodes.items():
        out.append(f'<g class="node" data-node="{key}"><rect rx="4"/><text>{_e(node)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _rollouts(rollouts: Sequence[Rollout]) -> str:
    if not rollouts:
        return "<p>No rollouts.</p>"
    out = []
    for r in rollouts:
        out.append(
            f'<article class="rollout" data-split="{_e(r.split)}"><h3>{_e(r.split)} '
            f'<span class="phase">{_e(r.phase)}</span></h3>'
            f"<p>step {min(r.step + 1, len(r.steps))} of {len(r.steps)}; weights "
            f'<span class="weights">{_e(render.weights_text(r.weights))}</span>; {_e(r.reason)}</p>'
            f'<div class="timeline" data-timeline="{_e(json.dumps(render.timeline_columns(r)))}"></div>'
            "</article>"
        )
    return "".join(out)


def _sources(records: Sequence[SourceRecord]) -> str:
    if not records:
        return "<p>No sources: this gitmesh run follows no Git source.</p>"
    out = []
    for record in records:
        ready = record.condition("Ready")
        state = "-" if ready is None else f"{'Ready' if ready.status else 'Not ready'}: {ready.reason}"
        cls = "idle" if ready is None else "good" if ready.status else "bad"
        reconciles = "".join(
            f"<tr><td>{_e(r.started_at.strftime('%H:%M:%S'))}</td><td>{_e(r.trigger)}</td>"
            f"<td>{_e(r.revision[:12])}</td><td>{_e(r.result)}</td><td>{_e(r.summary)}</td></tr>"
            for r in record.history[:RECONCILES_SHOWN]
        )
        out.append(
            f'<article class="source" data-source="{_e(record.source)}"><h3>{_e(record.source)} '
            f'<span class="{cls}">{_e(state)}</span></h3>'
            f"<p>applied {_e((record.last_applied or '-')[:12])}"
            f"{f' — {_e(ready.message)}' if ready is not None and ready.message else ''}</p>"
            "<table><thead><tr><th>started (UTC)</th><th>trigger</th><th>revision</th><th>result</th>"
            f"<th>plan</th></tr></thead><tbody>{reconciles}</tbody></table></article>"
        )
    return "".join(out)


def _proxies(report: Mapping[str, Any]) -> str:
    proxies = report.get("proxies", [])
    listed = "".join(f"<li>{_e(p)}</li>" for p in proxies[:PROXIES_SHOWN])
    more = f"<li>and {len(proxies) - PROXIES_SHOWN} more</li>" if len(proxies) > PROXIES_SHOWN else ""
    out = [f"<details><summary>{len(proxies)} connected</summary><ul>{listed}{more}</ul></details>"]
    nacks = report.get("nacks", [])
    if not nacks:
        out.append('<p class="good">No configuration rejected.</p>')
        return "".join(out)
    rows = "".join(
        f"<tr><td>{_e(time.strftime('%H:%M:%S', time.gmtime(n['at'])))}</td><td>{_e(n['proxy'])}</td>"
        f"<td>{_e(n['type'])}</td><td>{_e(n['version'])}</td>"
        f'<td class="bad">{_e(n["message"])}</td><td>{_e(", ".join(n.get("patches", [])))}</td></tr>'
        for n in reversed(nacks)
    )
    out.append(
        f'<table class="nacks"><caption class="bad">{len(nacks)} rejected (NACK), newest first</caption>'
        "<thead><tr><th>at (UTC)</th><th>proxy</th><th>type</th><th>version</th><th>Envoy said</th>"
        f"<th>patched by</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return "".join(out)


def _mesh(mesh: MeshState) -> str:
    """Who may call each identity (and on which routes), the splits, and the policies in force."""
    callers: dict[str, list[str]] = {}
    for p in mesh.permissions:
        routes = ", ".join(sorted({f"{m.group}/{m.name}" for m in p.http}))
        callers.setdefault(str(p.destination), []).append(f"{p.caller}" + (f" ({routes})" if routes else ""))
    out = []
    if mesh.permissive:
        out.append('<p class="warn">Permissive: every identity may call every service.</p>')
    rows = "".join(
        f'<tr data-identity="{_e(d)}"><td>{_e(d)}</td><td>{_e("; ".join(sorted(c)))}</td></tr>'
        for d, c in sorted(callers.items())
    )
    out.append(
        '<table class="access"><thead><tr><th>identity</th><th>may be called by</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        if rows
        else "<p>No one may call anyone (no TrafficTarget).</p>"
    )
    splits = "".join(
        f"<tr><td>{_e(root)}:{port}</td>"
        f"<td>{_e(render.weights_text({b.service.name: b.weight for b in s.backends}))}</td></tr>"
        for (root, port), s in sorted(mesh.splits.items())
    )
    if splits:
        out.append(
            '<table class="splits"><thead><tr><th>split</th><th>weights</th></tr></thead>'
            f"<tbody>{splits}</tbody></table>"
        )
    policies = [*mesh.retries, *mesh.limits, *mesh.faults, *mesh.egress, *mesh.ingress]
    if policies:
        out.append('<ul class="policies">' + "".join(f"<li>{_e(p)}</li>" for p in policies) + "</ul>")
    return "".join(out)


# A compliance state's class on the page: the colours ``gitmesh fleet status`` prints.
_COMPLIANCE = {"Compliant": "good", "Pending": "warn", "Suspended": "idle"}


def _fleet(members: Sequence[FleetMember], at: float, error: str) -> str:
    """The compliance table: one row per member and configuration (the member's state on its first)."""
    said = f'<p class="bad">The hub cannot be read: {_e(error)}</p>' if error else ""
    if not members:
        return said + "<p>No cluster has joined the fleet.</p>"
    rows = []
    for m in members:
        state = str(m.state.value)
        ago = f"{max(0.0, at - m.last_report.timestamp()):.0f}s ago" if m.last_report else "never"
        span = f' rowspan="{max(1, len(m.configurations))}"'
        first = (
            f"<td{span}>{_e(m.name)}</td>"
            f'<td class="state {_COMPLIANCE.get(state, "bad")}"{span}>{_e(state)}</td>'
            f'<td class="reason"{span}>{_e(m.reason)}</td>'
        )
        for i, c in enumerate(m.configurations or ({},)):
            cells = (
                f"<td>{_e(c.get('name', '-'))}</td>"
                f'<td class="desired">{_e(str(c.get("desiredRevision") or "-")[:12])}</td>'
                f'<td class="applied">{_e(str(c.get("appliedRevision") or "-")[:12])}</td>'
            )
            lead = first if i == 0 else ""
            report = f'<td class="reported"{span}>{_e(ago)}</td>' if i == 0 else ""
            rows.append(f'<tr data-cluster="{_e(m.name)}">{lead}{cells}{report}</tr>')
    head = "".join(
        f"<th>{c}</th>"
        for c in ("cluster", "state", "reason", "configuration", "desired", "applied", "last report")
    )
    return f'{said}<table class="fleet"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
