"""gitmesh rollout: progressive rollouts, by hand and walked without the controller."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click
from rich.text import Text

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    confirm_write,
    emit,
    err,
    examples,
    namespace_option,
    out,
    output_option,
    reports_errors,
    target_header,
    webhook_option,
    yes_option,
)
from gitmesh.errors import GitmeshError


@cli.group()
@examples("gitmesh rollout status -w", "gitmesh rollout promote bookstore-split")
def rollout() -> None:
    """Progressive traffic shifts: see them, move them by hand, run them (gitmesh explain rollout)."""


@rollout.command("status")
@examples(
    "gitmesh rollout status",
    "gitmesh rollout status bookstore/bookstore-split -w",
    "gitmesh rollout status -n bookstore -o json",
)
@click.argument("split", required=False)
@namespace_option
@backend_options
@output_option("json", "yaml")
@click.option(
    "-w", "--watch", is_flag=True, help="Print again on every change until no rollout is under way."
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="With --watch: seconds between looks."
)
@reports_errors
def rollout_status(
    split: str | None, namespace: str, target: BackendChoice, output: str, watch: bool, interval: float
) -> None:
    """Every rollout (or SPLIT's, as name or namespace/name): weights, step, last analysis and why it
    is stuck, if it is (read from the target; writes nothing)."""
    from gitmesh.rollout import driver, render

    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    shown: object = None  # what was printed last: --watch prints again only on a change
    while True:
        rollouts = {
            k: r
            for k, r in sorted(driver.load(settings).items())
            if split in (None, k, k.partition("/")[2]) and namespace in ("", k.partition("/")[0])
        }
        if output != "text":
            events = [driver.event(r) for r in rollouts.values()]
            if events != shown:
                emit("rollouts", {"target": settings.objects.describe(), "rollouts": events}, output)
            shown = events
        else:
            lines = [line for r in rollouts.values() for line in render.status_lines(r, time.time())]
            page = "\n".join(lines) or ("No rollouts." if split is None else f"No rollout of {split}.")
            if page != shown:
                if shown is not None:
                    out.print(Text(time.strftime("--- %H:%M:%S UTC", time.gmtime()), style="dim"))
                out.print(Text(page), soft_wrap=True)
            shown = page
        if not watch or not any(r.phase.active for r in rollouts.values()):
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


def _rollout_action(action: str, doc: str) -> None:
    @examples(
        f"gitmesh rollout {action} bookstore/bookstore-split",
        f"gitmesh rollout {action} web --context prod -y",
    )
    @rollout.command(action, help=doc)
    @click.argument("split")
    @backend_options
    @yes_option
    @output_option("json", "yaml")
    @webhook_option
    @reports_errors
    def command(split: str, target: BackendChoice, yes: bool, output: str, webhook: str | None) -> None:
        from gitmesh.rollout import driver

        settings = target.open()
        if output == "text":
            target_header(settings)
        confirm_write(settings, f"{action.capitalize()} the rollout of {split}", yes)
        r = driver.act(settings, split, action, driver.webhook(webhook), time.time())
        if output != "text":
            emit("rollout", driver.event(r), output)
            return
        out.print(f"{r.split}: {r.phase} ({r.reason})")


_rollout_action("promote", "Put SPLIT's target weights in place now, whatever the checks say.")
_rollout_action("abort", "Put SPLIT back on its stable weights; the target waits for a new commit or retry.")
_rollout_action("retry", "Walk a failed or aborted SPLIT toward its target again, from the start.")


@rollout.command("run")
@examples(
    "gitmesh rollout run --envoy-admin 127.0.0.1:15000 --envoy-admin 127.0.0.1:15001",
    "gitmesh rollout run --prometheus http://prometheus:9090 --context prod",
)
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
@examples("gitmesh rollout timeline bookstore-split --out rollout.svg")
@click.argument("split")
@backend_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True, help="The SVG to write.")
@reports_errors
def rollout_timeline(split: str, target: BackendChoice, out_file: str) -> None:
    """Draw SPLIT's rollout (weights and success rate over time) as an SVG."""
    from gitmesh.rollout import driver, render

    found = [
        r for k, r in driver.load(target.open(read_only=True)).items() if split in (k, k.partition("/")[2])
    ]
    if len(found) != 1:
        raise click.BadParameter(f"no single rollout of {split!r}", param_hint="SPLIT")
    Path(out_file).write_text(render.timeline_svg(found[0]))
    out.print(f"Wrote {out_file}")
