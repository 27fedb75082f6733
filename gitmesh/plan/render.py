"""Plans and diagnostics for people: terminal text, pull-request markdown, GitHub annotations.

Renderers return text or write to a rich Console; they never decide anything.
"""

from __future__ import annotations

import difflib
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from gitmesh.plan.model import Action, Change, EnvoyChange, FieldDiff, Impact, Plan, RouteStatus
from gitmesh.revision.diagnostics import Diagnostic, Severity

_SIGN = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-", Action.NOOP: " "}
_STYLE = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red", Action.NOOP: "dim"}
_OP_SIGN = {"add": "+", "remove": "-", "change": "~"}
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow"}


# --- diagnostics ---------------------------------------------------------------------------------


def diagnostics_text(
    console: Console, diagnostics: Sequence[Diagnostic], sources: Mapping[str, bytes]
) -> None:
    """``file:line:col: error GM020 field: message``, then the offending line with a caret."""
    lines_cache: dict[str, list[str]] = {}
    for d in diagnostics:
        loc = d.location
        head = Text()
        head.append(f"{loc}: ", style="bold")
        head.append(f"{d.severity.value} {d.code}", style=_SEVERITY_STYLE[d.severity])
        head.append(f" {d.path}: " if d.path else " ")
        head.append(d.message)
        console.print(head, soft_wrap=True)
        if loc.file not in lines_cache:
            data = sources.get(loc.file, b"")
            lines_cache[loc.file] = data.decode("utf-8", "replace").splitlines() if b"\0" not in data else []
        lines = lines_cache[loc.file]
        if 0 < loc.line <= len(lines) and len(lines[loc.line - 1]) <= 500:
            gutter = f"{loc.line:>5} | "
            console.print(
                Text(gutter, style="dim") + Text(lines[loc.line - 1].replace("\t", " ")), soft_wrap=True
            )
            console.print(Text(" " * (len(gutter) + loc.column - 1) + "^", style=_SEVERITY_STYLE[d.severity]))
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    console.print(Text(f"{errors} error(s), {warnings} warning(s)", style="bold red" if errors else "bold"))


def diagnostics_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps(
        {
            "errors": sum(d.is_error for d in diagnostics),
            "warnings": sum(not d.is_error for d in diagnostics),
            "diagnostics": [
                {
                    "file": d.location.file,
                    "line": d.location.line,
                    "column": d.location.column,
                    "code": d.code,
                    "severity": d.severity.value,
                    "path": d.path,
                    "message": d.message,
                    "object": str(d.ref) if d.ref else None,
                }
                for d in diagnostics
            ],
        },
        indent=2,
    )


def diagnostics_github(diagnostics: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: each diagnostic becomes an annotation on the pull request."""
    out = []
    for d in diagnostics:
        level = "error" if d.is_error else "warning"
        props = (
            f"file={_gh_prop(d.location.file)},line={d.location.line},col={d.location.column},"
            f"title={_gh_prop(d.code)}"
        )
        message = f"{d.path}: {d.message}" if d.path else d.message
        out.append(f"::{level} {props}::{_gh_data(message)}")
    return "\n".join(out)


def _gh_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(s: str) -> str:
    return _gh_data(s).replace(":", "%3A").replace(",", "%2C")


# --- plans ---------------------------------------------------------------------------------------


def plan_text(console: Console, plan: Plan, *, show_unchanged: bool = False) -> None:
    revision = plan.revision[:12] if plan.revision else "working directory"
    console.print(
        Text(f"Plan for source {plan.source!r}: {revision} ({plan.ref}) -> {plan.backend}", style="bold"),
        soft_wrap=True,
    )
    if not plan.impact.empty:
        console.print()
        console.print(Text("Traffic impact", style="bold underline"))
        for line, style in _impact_lines(plan.impact):
            console.print(Text(line, style=style), soft_wrap=True)
    if plan.envoy:
        console.print()
        console.print(Text("Envoy resources (EnvoyPatch)", style="bold underline"))
        for e in plan.envoy:
            console.print(Text(f"  {_envoy_head(e)}", style="bold"), soft_wrap=True)
            for line in _envoy_diff(e):
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                console.print(Text(f"    {line}", style=style), soft_wrap=True)
    if plan.routes:
        console.print()
        console.print(Text("Route status (Gateway API)", style="bold underline"))
        for r in plan.routes:
            console.print(
                Text(f"  {route_line(r)}", style="green" if r.accepted and r.resolved else "red"),
                soft_wrap=True,
            )
    shown = [c for c in plan.changes if show_unchanged or c.action is not Action.NOOP]
    if shown:
        console.print()
    for c in shown:
        where = f"  ({c.location})" if c.location else ""
        head = Text(f"  {_SIGN[c.action]} {c.action.value:<7} ", style=_STYLE[c.action])
        console.print(head + Text(str(c.ref), style="bold") + Text(where, style="dim"), soft_wrap=True)
        if c.reason:
            console.print(Text(f"      ({c.reason})", style="dim"), soft_wrap=True)
        if c.conflict is not None and c.take_over:
            taking = f"      taking back from another field manager: {c.conflict.detail}"
            console.print(Text(taking, style="yellow"), soft_wrap=True)
        elif c.conflict is not None:
            console.print(Text(f"      conflict: {c.conflict.detail}", style="bold red"), soft_wrap=True)
        if c.action is Action.UPDATE:
            for f in c.diff:
                console.print(Text(f"      {_diff_line(f)}", style=_STYLE_OP[f.op]), soft_wrap=True)
    console.print()
    console.print(Text(plan.summary(), style="bold"))


_STYLE_OP = {"add": "green", "remove": "red", "change": "yellow"}


def _diff_line(f: FieldDiff) -> str:
    written = f"  (written as {f.written})" if f.written else ""
    if f.op == "add":
        return f"+ {f.path}: {_value(f.after)}{written}"
    if f.op == "remove":
        return f"- {f.path}: {_value(f.before)}"
    return f"~ {f.path}: {_value(f.before)} -> {_value(f.after)}{written}"


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{p:g}%"


def _impact_lines(impact: Impact) -> Iterable[tuple[str, str]]:
    for s in impact.splits:
        yield f"  {s.split} splits {s.service!r}:", "bold"
        width = max(len(b.service) for b in s.backends)
        for b in s.backends:
            note = "  (new backend)" if b.before is None else "  (removed)" if b.after is None else ""
            line = f"    {b.service:<{width}}  {_percent(b.before):>7} -> {_percent(b.after):<7}{note}"
            yield line.rstrip(), ""
    if impact.access:
        yield "  Access:", "bold"
        for a in impact.access:
            sign, style = ("+", "green") if a.gained else ("-", "red")
            verb = "may now call" if a.gained else "loses"
            yield f"    {sign} {a.caller} {verb} {a.destination}: {a.route}", style
    if impact.policies:
        yield "  Policies:", "bold"
        for p in impact.policies:
            sign, style = ("+", "green") if p.gained else ("-", "red")
            yield f"    {sign} {p.line}", style


def plan_markdown(plan: Plan) -> str:
    """A pull-request comment: a summary line, the traffic table, and each change folded."""
    revision = f"`{plan.revision[:12]}`" if plan.revision else "the working directory"
    out = [f"### gitmesh plan for {revision} ({plan.ref}) -> {plan.backend}", "", f"**{plan.summary()}**", ""]
    if plan.impact.splits:
        out += ["#### Traffic splits", "", "| split | backend | before | after |", "|---|---|---:|---:|"]
        for s in plan.impact.splits:
            for b in s.backends:
                out.append(f"| `{s.split}` | `{b.service}` | {_percent(b.before)} | {_percent(b.after)} |")
        out.append("")
    if plan.impact.access:
        out += ["#### Access", "", "| | caller | destination | route |", "|---|---|---|---|"]
        for a in plan.impact.access:
            mark = "gained" if a.gained else "**lost**"
            out.append(f"| {mark} | `{a.caller}` | `{a.destination}` | `{_md_code(a.route)}` |")
        out.append("")
    if plan.envoy:
        out += ["#### Envoy resources (EnvoyPatch)", ""]
        for e in plan.envoy:
            out += [
                f"<details><summary><code>{html.escape(_envoy_head(e))}</code></summary>",
                "",
                "```diff",
                *_envoy_diff(e),
                "```",
                "",
                "</details>",
            ]
        out.append("")
    if plan.routes:
        out += ["#### Route status (Gateway API)", ""]
        out += [f"- `{_md_code(route_line(r))}`" for r in plan.routes]
        out.append("")
    if plan.impact.policies:
        out += ["#### Policies", ""]
        out += [
            f"- {'now' if p.gained else '**no longer**'}: `{_md_code(p.line)}`" for p in plan.impact.policies
        ]
        out.append("")
    changed = [c for c in plan.changes if c.action is not Action.NOOP]
    if changed:
        out += ["#### Changes", ""]
    for c in changed:
        note = f" ({c.reason})" if c.reason else ""
        note += " **conflict**" if c.conflict is not None and not c.take_over else ""
        out += [
            f"<details><summary><code>{_SIGN[c.action]} {c.action.value} {c.ref}</code>{note}</summary>",
            "",
            "```diff",
            *_change_diff_lines(c),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(out).rstrip() + "\n"


def route_line(r: RouteStatus) -> str:
    """``HTTPRoute/shop/reviews on shop/reviews:80: Accepted, ResolvedRefs``, or what is not and why."""
    said = [
        r.accepted_reason if r.accepted else f"not Accepted ({r.accepted_reason})",
        r.resolved_reason if r.resolved else f"not ResolvedRefs ({r.resolved_reason})",
    ]
    why = f": {r.message}" if r.message else ""
    return f"{r.route} on Service {r.parent}: {', '.join(said)}{why}"


def _envoy_head(e: EnvoyChange) -> str:
    shown = ", ".join(e.proxies[:3]) + (f" and {len(e.proxies) - 3} more" if len(e.proxies) > 3 else "")
    return f"{e.type} {e.name} on {len(e.proxies)} {'proxy' if len(e.proxies) == 1 else 'proxies'}: {shown}"


def _envoy_diff(e: EnvoyChange) -> list[str]:
    """The changed lines of the resource's JSON, with a little context."""
    lines = difflib.unified_diff(
        e.before.splitlines(), e.after.splitlines(), "before", "after", n=2, lineterm=""
    )
    return list(lines)[2:]  # without the file header


def _change_diff_lines(c: Change) -> list[str]:
    """Updates as one line per field (``!`` marks a change in diff syntax); whole objects as YAML."""
    if c.action is Action.UPDATE:
        return [_diff_line(f).replace("~ ", "! ", 1) if f.op == "change" else _diff_line(f) for f in c.diff]
    sign, obj = ("+", c.after) if c.action is Action.CREATE else ("-", c.before)
    text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
    return [f"{sign} {line}" for line in text.splitlines()]


def _md_code(s: str) -> str:
    return s.replace("`", "'").replace("|", "\\|")
