"""gitmesh rollout: progressive rollouts, by hand and walked without the controller."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import click
from rich.text import Text

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    err,
    out,
    reports_errors,
    webhook_option,
)
from gitmesh.errors import GitmeshError


@cli.group()
def rollout() -> None:
    """Progressive traffic shifts: see them, move them by hand, run them (gitmesh explain rollout)."""


@rollout.command("status")
@click.argument("split", required=False)
@backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@reports_errors
def rollout_status(split: str | None, target: BackendChoice, output: str) -> None:
    """Every rollout (or SPLIT's, as name or namespace/name): weights, step, last analysis and why."""
    from gitmesh.rollout import driver, render

    rollouts = {
        k: r for k, r in sorted(driver.load(target.open()).items()) if split in (None, k, k.partition("/")[2])
    }
    if output == "json":
        click.echo(json.dumps({k: driver.event(r) for k, r in rollouts.items()}, indent=2))
        return
    if not rollouts:
        out.print("No rollouts." if split is None else f"No rollout of {split}.")
    for r in rollouts.values():
        for line in render.status_lines(r, time.time()):
            out.print(Text(line), soft_wrap=True)


def _rollout_action(action: str, doc: str) -> None:
    @rollout.command(action, help=doc)
    @click.argument("split")
    @backend_options
    @webhook_option
    @reports_errors
    def command(split: str, target: BackendChoice, webhook: str | None) -> None:
        from gitmesh.rollout import driver

        r = driver.act(target.open(), split, action, driver.webhook(webhook), time.time())
        out.print(f"{r.split}: {r.phase} ({r.reason})")


_rollout_action("promote", "Put SPLIT's target weights in place now, whatever the checks say.")
_rollout_action("abort", "Put SPLIT back on its stable weights; the target waits for a new commit or retry.")
_rollout_action("retry", "Walk a failed or aborted SPLIT toward its target again, from the start.")


@rollout.command("run")
@backend_options
@click.option("--envoy-admin", multiple=True, help="A sidecar's admin HOST:PORT to read stats from (repeat).")
@click.option("--prometheus", help="Read metrics from this Prometheus (URL) instead of the sidecars.")
@webhook_option
@click.option(
    "--push-reverts",
    metavar="REPO",
    help="After a failed rollout, push a commit restoring the stable weights to branch "
    "gitmesh/rollback/<sha> of this Git repo (path or URL), for a person to review.",
)
@click.option(
    "--tick", type=float, default=1.0, show_default=True, help="Seconds between looks at the rollouts."
)
@reports_errors
def rollout_run(
    target: BackendChoice,
    envoy_admin: tuple[str, ...],
    prometheus: str | None,
    webhook: str | None,
    push_reverts: str | None,
    tick: float,
) -> None:
    """Walk every rollout under way: analyse each step when due, write the weights, roll back on failure."""
    import logging

    from gitmesh.rollout import driver
    from gitmesh.rollout.envoy_stats import EnvoyStats
    from gitmesh.rollout.metrics import MetricsSource
    from gitmesh.rollout.prometheus import Prometheus

    if bool(envoy_admin) == bool(prometheus):
        raise click.UsageError("give the sidecars' --envoy-admin addresses or --prometheus, one of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics: MetricsSource = (
        Prometheus(prometheus) if prometheus else EnvoyStats(lambda: dict.fromkeys(envoy_admin, ""))
    )
    runner = driver.Runner(target.open(), metrics, driver.webhook(webhook), push_reverts)
    err.print("Running rollouts; Ctrl-C stops (their state stays in the rollout store).")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                runner.tick(time.time())
            except GitmeshError as e:  # the cluster may be back next time; the state is kept
                logging.getLogger("gitmesh.rollout").warning("tick failed: %s", e)
            time.sleep(tick)


@rollout.command("timeline")
@click.argument("split")
@backend_options
@click.option(
    "-o", "--out", "out_file", type=click.Path(dir_okay=False), required=True, help="The SVG to write."
)
@reports_errors
def rollout_timeline(split: str, target: BackendChoice, out_file: str) -> None:
    """Draw SPLIT's rollout (weights and success rate over time) as an SVG."""
    from gitmesh.rollout import driver, render

    found = [r for k, r in driver.load(target.open()).items() if split in (k, k.partition("/")[2])]
    if len(found) != 1:
        raise click.BadParameter(f"no single rollout of {split!r}", param_hint="SPLIT")
    Path(out_file).write_text(render.timeline_svg(found[0]))
    out.print(f"Wrote {out_file}")
