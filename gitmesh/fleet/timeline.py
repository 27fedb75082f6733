"""A wave's stages as an SVG timeline: one panel per wave (as ``gitmesh fleet wave status -o json``
prints it), one row per stage, a bar from when its clusters were told the revision to when it passed
or went back, coloured by its state.

Pure: waves in, SVG text out (hand-written, nothing to install). Each panel has its own time axis,
from its first stage's start; a stage not started yet is drawn as a dashed outline at the end of
its row, and one still under way runs to ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

# Fill colours by stage state, and by wave state for each panel's badge.
STAGE_COLOURS = {
    "Pending": "#9e9e9e",
    "WaitingApproval": "#7b1fa2",
    "Applying": "#1565c0",
    "Verifying": "#f9a825",
    "Passed": "#2e7d32",
    "RolledBack": "#c62828",
}
WAVE_COLOURS = {
    "Progressing": "#1565c0",
    "WaitingApproval": "#7b1fa2",
    "Halted": "#c62828",
    "Aborted": "#e65100",
    "Completed": "#2e7d32",
}

QUOTE = {"'": "&apos;"}  # attribute values are in single quotes
WIDTH = 900
LABEL = 200  # the stage names and clusters, left of the bars
BARS = (LABEL + 10, WIDTH - 200)  # where bars may run; the right margin holds each bar's state
ROW = 26
HEADER = 44  # a panel's title and reason
AXIS = 22
GAP = 16
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _text(x: float, y: float, text: str, size: int = 12, **attrs: str) -> str:
    extra = "".join(f" {k.replace('_', '-')}='{v}'" for k, v in attrs.items())
    return f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}'{extra}>{escape(text)}</text>"


def _seconds(t: float) -> str:
    return f"{t:.0f} s" if t >= 10 or t == 0 else f"{t:.1f} s"


def _panel(wave: Mapping[str, Any], top: float, now: datetime) -> tuple[list[str], float]:
    """The SVG elements of one wave's panel from ``top``, and its height."""
    stages: Sequence[Mapping[str, Any]] = wave["stages"]
    starts = [t for s in stages if (t := _at(s.get("started"))) is not None]
    origin = min(starts) if starts else now
    ends = [(_at(s.get("finished")) or now) for s in stages if s.get("started")]
    span = max([(e - origin).total_seconds() for e in ends] + [1.0])
    left, right = BARS
    scale = (right - left) / span

    def x(at: datetime) -> float:
        return left + (at - origin).total_seconds() * scale

    state = str(wave["state"])
    title = f"{wave['configuration']} toward {str(wave['revision'])[:12]}"
    badge = WAVE_COLOURS.get(state, "#616161")
    parts = [
        _text(10, top + 16, title, 14, font_weight="bold"),
        f"<rect x='{WIDTH - 140}' y='{top + 3}' width='130' height='18' rx='9' fill='{badge}'/>",
        _text(WIDTH - 75, top + 16, state, 12, fill="white", text_anchor="middle", font_weight="bold"),
    ]
    note = str(wave.get("reason") or "")
    if wave.get("abort") and not note:
        note = f"aborted by {wave['abort']['by']} at {wave['abort']['at']}"
    if note:
        parts.append(_text(10, top + 34, note if len(note) <= 130 else note[:129] + "…", 11, fill="#424242"))
    y = top + HEADER
    for stage in stages:
        name, colour = str(stage["name"]), STAGE_COLOURS.get(str(stage["state"]), "#616161")
        clusters = ", ".join(stage.get("clusters") or []) or "no clusters"
        parts.append(_text(10, y + 13, name, 12, font_weight="bold"))
        parts.append(_text(10 + 7.5 * len(name) + 8, y + 13, clusters, 11, fill="#616161"))
        label = f"{stage['state']} at {str(stage['revision'])[:7]}"
        started = _at(stage.get("started"))
        if started is None:  # not reached: an outline where it would go
            parts.append(
                f"<rect class='stage' data-stage='{escape(name, QUOTE)}' x='{right - 60:.1f}' y='{y + 3}' "
                f"width='60' height='{ROW - 8}' rx='3' fill='white' stroke='{colour}' "
                "stroke-dasharray='4 3'/>"
            )
        else:
            finished = _at(stage.get("finished")) or now
            x0, x1 = x(started), max(x(finished), x(started) + 3)
            took = _seconds((finished - started).total_seconds())
            parts.append(
                f"<rect class='stage' data-stage='{escape(name, QUOTE)}' x='{x0:.1f}' y='{y + 3}' "
                f"width='{x1 - x0:.1f}' height='{ROW - 8}' rx='3' fill='{colour}'>"
                f"<title>{escape(f'{name}: {took}')}</title></rect>"
            )
            label += f", {took}"
        parts.append(_text(right + 8, y + 13, label, 11, fill=colour))
        y += ROW
    parts.append(f"<line x1='{left}' y1='{y + 2}' x2='{right}' y2='{y + 2}' stroke='#bdbdbd'/>")
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        tick = left + (right - left) * fraction
        parts.append(f"<line x1='{tick:.1f}' y1='{y}' x2='{tick:.1f}' y2='{y + 5}' stroke='#bdbdbd'/>")
        parts.append(_text(tick, y + 17, _seconds(span * fraction), 10, fill="#757575", text_anchor="middle"))
    return parts, y + AXIS - top


def render(waves: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """The SVG of ``waves`` (``fleet wave status -o json``'s ``waves``), top to bottom."""
    body: list[str] = []
    top = 10.0
    for wave in waves:
        parts, height = _panel(wave, top, now)
        body += parts
        top += height + GAP
    legend = top + 4
    x = 10.0
    for state, colour in STAGE_COLOURS.items():
        body.append(f"<rect x='{x:.1f}' y='{legend}' width='12' height='12' rx='2' fill='{colour}'/>")
        body.append(_text(x + 16, legend + 10, state, 11, fill="#424242"))
        x += 16 + 7 * len(state) + 18
    height = legend + 24
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height:.0f}' "
        f"viewBox='0 0 {WIDTH} {height:.0f}' {FONT}>\n"
        f"<rect width='{WIDTH}' height='{height:.0f}' fill='white'/>\n" + "\n".join(body) + "\n</svg>\n"
    )
