"""gitmesh convert: manifests rewritten from one mesh API to another."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from gitmesh import pipeline
from gitmesh.cli.base import (
    cli,
    emit,
    err,
    examples,
    output_option,
    report,
    reports_errors,
    revision_of,
    source_options,
)
from gitmesh.errors import PlanError
from gitmesh.plan import smi_to_gamma as conversion


@cli.group()
@examples("gitmesh convert smi-to-gamma examples/repo > routes.yaml")
def convert() -> None:
    """Rewrite manifests from one mesh API to another; reads manifests, writes nothing but --out FILE."""


@convert.command("smi-to-gamma")
@examples(
    "gitmesh convert smi-to-gamma examples/repo",
    "gitmesh convert smi-to-gamma --repo . --path mesh --out mesh/routes.yaml",
    "gitmesh convert smi-to-gamma examples/repo -o json",
)
@source_options
@output_option("json", "yaml")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write the routes to this file.")
@reports_errors
def smi_to_gamma(
    directory: str | None,
    repo: str | None,
    ref: str,
    subdir: str,
    namespace: str,
    output: str,
    out_file: str | None,
) -> None:
    """HTTPRoutes on Services (Gateway API for mesh) that route as the TrafficSplits read from a directory
    or a commit do; read from the manifests, writes nothing but --out FILE. What a route cannot say
    (TCP ports) is noted on stderr. Exit 1 if the manifests have errors."""
    revision = revision_of(directory, repo, ref, subdir, namespace)
    validated = pipeline.check(revision)
    if not validated.ok:
        report(validated, revision, "text", err)
        raise PlanError(f"{len(validated.errors)} error(s) in {revision.short}: fix them to convert")
    done = conversion.convert(m.obj for m in validated.desired)
    text = yaml.safe_dump_all(done.routes, sort_keys=False)
    if out_file:
        Path(out_file).write_text(text)
    if output != "text":
        emit("conversion", {"routes": list(done.routes), "notes": list(done.notes)}, output)
    elif not out_file:
        click.echo(text, nl=False)
    for note in done.notes:
        err.print(f"note: {note}")
    if out_file:
        err.print(f"{len(done.routes)} HTTPRoute(s) written to {out_file}")
