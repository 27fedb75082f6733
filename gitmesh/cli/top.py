"""gitmesh top: the mesh's service edges, worst first, and the rollouts under way, live."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    emit,
    envoy_admin_option,
    examples,
    out,
    output_option,
    reports_errors,
    sidecars_of,
)
from gitmesh.metrics import envoy, model
from gitmesh.rollout import driver, render
from gitmesh.rollout.model import Rollout


@cli.command()
@examples(
    "gitmesh top",
    "gitmesh top --once -o json",
    "gitmesh top --store mesh.db --envoy-admin 127.0.0.1:15000=bookstore/bookbuyer --once",
)
@backend_options
@envoy_admin_option
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds per refresh."
)
@click.option("--once", is_flag=True, help="Measure one interval, print it and exit.")
@output_option("json", "yaml")
@reports_errors
def top(
    target: BackendChoice, envoy_admin: tuple[str, ...], interval: float, once: bool, output: str
) -> None:
    """The service edges (RPS, success rate, refused calls, p99), worst first, and the rollouts under
    way, live."""
    settings = target.open(read_only=True)
    if output != "text" and not once:
        raise click.UsageError(f"-o {output} prints one interval: give --once")
    stats = envoy.EnvoyStats(sidecars_of(settings, envoy_admin))
    # A sidecar that cannot be read is named, and the others shown all the same.
    before = stats.read_available().read
    if once:
        time.sleep(interval)
        now = stats.read_available()
        edges = model.edges(model.window(now.carried(before), before), interval)
        rollouts = _under_way(driver.load(settings))
        if output != "text":
            emit("top", _json(edges, rollouts, interval, now.unreachable), output)
        else:
            out.print(_view(edges, rollouts, now, interval))
        return
    with contextlib.suppress(KeyboardInterrupt), Live(console=out, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            now = stats.read_available()
            reading = now.carried(before)
            edges = model.edges(model.window(reading, before), interval)
            live.update(_view(edges, _under_way(driver.load(settings)), now, interval), refresh=True)
            before = reading


def _under_way(rollouts: Mapping[str, Rollout]) -> list[Rollout]:
    return [r for _, r in sorted(rollouts.items()) if r.phase.active]


def _json(
    edges: list[model.Edge], rollouts: list[Rollout], interval: float, unreachable: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "interval": interval,
        "edges": [dataclasses.asdict(e) for e in edges],
        "rollouts": [driver.event(r) for r in rollouts],
        "unreachable": dict(sorted(unreachable.items())),
    }


def _number(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def _view(edges: list[model.Edge], rollouts: list[Rollout], stats: envoy.Available, interval: float) -> Group:
    caption = "; ".join(f"{admin} unreachable ({why})" for admin, why in sorted(stats.unreachable.items()))
    table = Table(
        title=f"Service edges, worst first ({len(stats.read)} sidecars, last {interval:g}s)",
        title_justify="left",
        caption=f"[red]{escape(caption)}[/]" if caption else None,
        caption_justify="left",
    )
    for column in ("source", "destination", "RPS", "success", "denied", "p50", "p99", "conns"):
        table.add_column(column, justify="left" if column in ("source", "destination") else "right")
    for e in edges:
        rate = _number(e.success_rate, "%")
        style = "" if e.success_rate is None or e.success_rate >= 99 else "red"
        table.add_row(
            e.source or "-",
            e.destination,
            f"{e.rps:.1f}",
            f"[{style}]{rate}[/]" if style else rate,
            f"[red]{e.denied_rps:.1f}[/]" if e.denied_rps > 0 else f"{e.denied_rps:.1f}",
            _number(e.p50_ms, "ms"),
            _number(e.p99_ms, "ms"),
            f"{e.connections:.0f}",
        )
    steps = Table(title="Rollouts under way", title_justify="left")
    for column in ("split", "phase", "step", "weights"):
        steps.add_column(column)
    for r in rollouts:
        steps.add_row(
            r.split,
            str(r.phase),
            f"{min(r.step + 1, len(r.steps))} of {len(r.steps)}",
            render.weights_text(r.weights),
        )
    return Group(table, steps)
