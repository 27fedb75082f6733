"""Rollouts for people: the status lines, the timeline as an SVG drawing (a file), and as columns for
the console's chart library. Pure functions."""

from __future__ import annotations

import html
import itertools
import time
from typing import Any

from gitmesh.rollout.model import Phase, Rollout, Weights

_TICKS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)  # seconds between time ticks
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
_PHASE_COLOURS = {
    Phase.PROGRESSING: "#1f77b4",
    Phase.HOLDING: "#bcbd22",
    Phase.SUCCEEDED: "#2ca02c",
    Phase.FAILED: "#d62728",
    Phase.ABORTED: "#7f7f7f",
}


def weights_text(weights: Weights) -> str:
    total = sum(weights.values()) or 1
    return "  ".join(f"{b} {100 * w / total:.0f}%" for b, w in weights.items())


# Seconds a due check may wait before the rollout is shown as stuck: a runner looks every second or so.
STUCK_AFTER = 30.0


def status_lines(r: Rollout, now: float) -> list[str]:
    """What ``gitmesh rollout status`` prints for one rollout."""
    lines = [
        f"{r.split}  {r.phase}  (revision {r.revision[:12] or '-'}, source {r.source})",
        f"  weights     {weights_text(r.weights)}",
        f"  step        {min(r.step + 1, len(r.steps))} of {len(r.steps)}, then the target",
        f"  target      {weights_text(r.target)}",
        f"  stable      {weights_text(r.stable)}",
        f"  failures    {r.failures} failed check(s); {r.policy.failure_threshold} roll back",
        f"  reason      {r.reason}",
    ]
    if r.phase.active and now - r.next_check_at > STUCK_AFTER:
        lines.append(
            f"  stuck       its check is {now - r.next_check_at:.0f}s overdue: no gitmesh run or "
            "gitmesh rollout run is walking it"
        )
    elif r.phase.active:
        lines.append(f"  next check  in {max(0.0, r.next_check_at - now):.0f}s")
    if r.analysis is not None:
        when = time.strftime("%H:%M:%S", time.gmtime(r.analysis.at))
        lines.append(f"  analysis    {r.analysis.verdict} at {when} UTC")
        lines += [f"    {reason}" for reason in r.analysis.reasons]
    return lines


def _share(weights: Weights, backend: str) -> float:
    return 100 * weights.get(backend, 0) / (sum(weights.values()) or 1)


def timeline_columns(r: Rollout) -> dict[str, Any]:
    """The timeline as columns, for the console's chart library and for ``timeline_svg``: seconds
    since the start (and a little room after the last point, where the final weights hold), each
    backend's weight as a share in percent and the success rate of each check it was analysed in
    (None at the other moments), and where the phase changed."""
    points = r.history
    t0 = points[0].at if points else 0.0
    end = (points[-1].at - t0) * 1.15 if points else 1.0
    backends = list(dict.fromkeys(b for p in points for b in p.weights))
    analysed = [b for b in backends if any(p.success_rate.get(b) is not None for p in points)]
    changes = [p for i, p in enumerate(points) if i == 0 or p.phase is not points[i - 1].phase]
    return {
        "seconds": [*(round(p.at - t0, 3) for p in points), round(max(end, 1.0), 3)],
        "backends": backends,
        "series": [
            {
                "label": f"{b} weight",
                "backend": i,
                "kind": "weight",
                "values": [_share(p.weights, b) for p in [*points, *points[-1:]]],  # held to the end
            }
            for i, b in enumerate(backends)
        ]
        + [
            {
                "label": f"{b} success rate",
                "backend": backends.index(b),
                "kind": "success",
                "values": [*(p.success_rate.get(b) for p in points), None],
            }
            for b in analysed
        ],
        "phases": [
            {"at": round(p.at - t0, 3), "phase": str(p.phase), "colour": _PHASE_COLOURS[p.phase]}
            for p in changes
        ],
        "colours": list(_COLOURS),
    }


def timeline_svg(r: Rollout, width: int = 760, height: int = 420) -> str:
    """Two panels over the rollout's time (``timeline_columns``): each backend's weight (percent),
    and the success rate of the backends analysed at each check; the phase changes marked on the
    time axis."""
    columns = timeline_columns(r)
    seconds: list[float] = columns["seconds"]
    span = seconds[-1]
    left, right, top, gap = 50, 150, 50, 60
    panel = (height - top - gap - 50) // 2

    def x(t: float) -> float:
        return left + (width - left - right) * t / span

    def y(value: float, base: int) -> float:
        return base + panel - panel * value / 100

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">Rollout of {html.escape(r.split)}: {r.phase}</text>',
    ]
    bases = (top, top + panel + gap)
    for base, title in zip(bases, ("weight %", "success rate %"), strict=True):
        out.append(
            f'<rect x="{left}" y="{base}" width="{width - left - right}" height="{panel}" '
            'fill="none" stroke="#999"/>'
        )
        out.append(f'<text x="{left}" y="{base - 6}">{title}</text>')
        for v in (0, 50, 100):
            out.append(f'<text x="{left - 6}" y="{y(v, base) + 4:.1f}" text-anchor="end">{v}</text>')
    every = next((n for n in _TICKS if n >= span / 6), _TICKS[-1])
    for tick in (every * i for i in range(int(span // every) + 1)):
        out.append(
            f'<text x="{x(tick):.1f}" y="{bases[1] + panel + 18}" text-anchor="middle">{tick:.0f}s</text>'
        )
    for i, b in enumerate(columns["backends"]):
        colour = _COLOURS[i % len(_COLOURS)]
        out.append(
            f'<text x="{width - right + 8}" y="{top + 14 + 16 * i}" fill="{colour}">{html.escape(b)}</text>'
        )
    for series in columns["series"]:
        colour = _COLOURS[series["backend"] % len(_COLOURS)]
        at = [(t, v) for t, v in zip(seconds, series["values"], strict=True) if v is not None]
        if series["kind"] == "weight":  # weights hold until they change: a step line
            path = [f"M{x(at[0][0]):.1f},{y(at[0][1], bases[0]):.1f}"]
            for (_, before), (t, v) in itertools.pairwise(at):
                path.append(f"L{x(t):.1f},{y(before, bases[0]):.1f} L{x(t):.1f},{y(v, bases[0]):.1f}")
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"/>')
            continue
        for t, rate in at:
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(rate, bases[1]):.1f}" r="3.5" fill="{colour}"/>')
        if len(at) > 1:
            line = " ".join(f"{x(t):.1f},{y(rate, bases[1]):.1f}" for t, rate in at)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}"/>')
    for change in columns["phases"]:
        t, colour = change["at"], change["colour"]
        out.append(
            f'<line x1="{x(t):.1f}" y1="{top - 18}" x2="{x(t):.1f}" y2="{bases[1] + panel}" '
            f'stroke="{colour}" stroke-dasharray="3,3"/>'
        )
        out.append(f'<text x="{x(t) + 3:.1f}" y="{top - 22}" fill="{colour}">{change["phase"]}</text>')
    out.append(f'<text x="{left}" y="{height - 8}">time since the rollout started</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
