"""gitmesh metrics: the mesh's metrics model for other tools (Prometheus)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import click
import yaml

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    envoy_admin_option,
    examples,
    out,
    reports_errors,
    sidecars_of,
)
from gitmesh.metrics import prometheus

FOLLOW_EVERY = 5.0  # seconds between looks at the sidecars, with --follow


@cli.group()
@examples("gitmesh metrics prometheus --out prometheus/", "gitmesh metrics dashboards --out dashboards/")
def metrics() -> None:
    """The mesh's metrics for other tools: Prometheus scrape configuration and rules."""


@metrics.command("prometheus")
@examples(
    "gitmesh metrics prometheus --out /etc/prometheus/gitmesh --follow",
    "gitmesh metrics prometheus --out prom/ --envoy-admin 127.0.0.1:15000=bookstore/bookbuyer",
)
@backend_options
@envoy_admin_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The directory to write prometheus.yml, the rules and the sidecars' discovery file to.",
)
@click.option(
    "--scrape-interval", default="15s", show_default=True, help="Prometheus's scrape and rule interval."
)
@click.option("--follow", is_flag=True, help="Keep the discovery file current as sidecars come and go.")
@reports_errors
def metrics_prometheus(
    target: BackendChoice, envoy_admin: tuple[str, ...], out_dir: Path, scrape_interval: str, follow: bool
) -> None:
    """Write a Prometheus configuration scraping the sidecars, with recording and alerting rules
    (run Prometheus with --config.file=OUT/prometheus.yml)."""
    sidecars = sidecars_of(
        target.open(read_only=True), envoy_admin, required=not follow
    )  # following: they may come later
    out_dir.mkdir(parents=True, exist_ok=True)
    directory = str(out_dir.resolve())
    _write(
        out_dir / "prometheus.yml",
        yaml.safe_dump(prometheus.config(directory, scrape_interval), sort_keys=False),
    )
    _write(out_dir / prometheus.RULES, yaml.safe_dump(prometheus.rules(), sort_keys=False, width=1000))
    written = _targets(out_dir, sidecars())
    out.print(f"Wrote prometheus.yml, {prometheus.RULES} and {prometheus.TARGETS} ({len(written)} sidecars)")
    with contextlib.suppress(KeyboardInterrupt):
        while follow:
            time.sleep(FOLLOW_EVERY)
            now = sidecars()
            if now != written:
                written = _targets(out_dir, now)
                out.print(f"{prometheus.TARGETS}: {len(written)} sidecars")


@metrics.command("dashboards")
@examples("gitmesh metrics dashboards --out /var/lib/grafana/dashboards/gitmesh")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/dashboards"),
    show_default=True,
    help="The directory to write the dashboards' JSON to.",
)
def metrics_dashboards(out_dir: Path) -> None:
    """Write the Grafana dashboards (the mesh, a service, a rollout) over the recorded series."""
    from gitmesh.metrics import dashboards

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in dashboards.dashboards().items():
        _write(out_dir / name, text)
        out.print(f"Wrote {out_dir / name}")


def _targets(out_dir: Path, sidecars: dict[str, str]) -> dict[str, str]:
    _write(out_dir / prometheus.TARGETS, json.dumps(prometheus.targets(sidecars), indent=2))
    return sidecars


def _write(path: Path, text: str) -> None:
    """Whole or not at all: Prometheus rereads the discovery file whenever it changes."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
