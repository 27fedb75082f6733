"""Commands on manifests and what they change: validate, plan, apply, status, explain, install."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import click
import yaml
from rich.text import Text

from gitmesh import pipeline
from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    err,
    namespace_option,
    out,
    report,
    reports_errors,
    revision_of,
    source_name_option,
    source_options,
    webhook_option,
)
from gitmesh.cli.install import install
from gitmesh.errors import GitmeshError
from gitmesh.plan import crds, encode, render
from gitmesh.plan.model import Action, Plan
from gitmesh.revision.diagnostics import CODES
from gitmesh.settings import Settings, embedded
from gitmesh.state import SourceStatus
from gitmesh.state.records import SourceRecord
from gitmesh.sync.git import open_repo, read_revision


@cli.command()
@source_options
@click.option("--output", type=click.Choice(["human", "json", "github"]), default="human", show_default=True)
@reports_errors
def validate(
    directory: str | None, repo: str | None, ref: str, subdir: str, namespace: str, output: str
) -> None:
    """Check manifests: schemas and cross-object meaning. Exit 1 on any error."""
    revision = revision_of(directory, repo, ref, subdir, namespace)
    validated = pipeline.check(revision)
    report(validated, revision, output, out)
    if output == "human":
        read = f"{len(revision.files)} files" + (
            f", {len(revision.builds)} kustomizations" if revision.builds else ""
        )
        out.print(f"{len(validated.desired)} objects valid in {read} ({revision.short})")
    sys.exit(0 if validated.ok else 1)


@cli.command()
@source_options
@backend_options
@source_name_option
@click.option("--base", help="Plan against another Git ref instead of the backend (needs --repo).")
@click.option("--head", help="With --base: the ref to plan (default: --ref).")
@click.option("--output", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option(
    "-o", "--out", "out_file", type=click.Path(dir_okay=False), help="Save the plan for gitmesh apply."
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@click.option("--show-unchanged", is_flag=True, help="List unchanged objects too.")
@reports_errors
def plan(
    directory: str | None,
    repo: str | None,
    ref: str,
    subdir: str,
    namespace: str,
    target: BackendChoice,
    source_name: str,
    base: str | None,
    head: str | None,
    output: str,
    out_file: str | None,
    detailed_exitcode: bool,
    show_unchanged: bool,
) -> None:
    """Show what applying the manifests would change, and what it does to traffic."""
    if base:
        if not repo:
            raise click.UsageError("--base needs --repo")
        git_repo = open_repo(repo)
        base_rev = read_revision(git_repo, base, subdir, namespace)
        revision = read_revision(git_repo, head or ref, subdir, namespace)
        settings = embedded(":memory:")
        base_checked = pipeline.check(base_rev)
        if not base_checked.ok:
            err.print(f"[yellow]note:[/] base {base} has errors; planning against an empty mesh")
        else:
            pipeline.apply(pipeline.plan(base_rev, base_checked, settings, source_name), settings)
    else:
        revision = revision_of(directory, repo, ref, subdir, namespace)
        settings = target.open()
    validated = pipeline.check(revision, None if base else settings.objects)
    if not validated.ok:
        report(validated, revision, "json" if output == "json" else "human")
        sys.exit(1)
    from gitmesh.rollout import driver

    # The plan as apply will write it: rollout steps included.
    result = driver.prepare(pipeline.plan(revision, validated, settings, source_name), settings, time.time())
    if base:  # planned against the base revision, not against a backend: the header says which
        result = dataclasses.replace(result, backend=f"base {base_rev.short} ({base})")
    # With --base, against the base revision: what merging the pull request does to rollouts.
    notes = _rollout_notes(result, settings)
    if out_file:
        Path(out_file).write_text(encode.dumps(result))
    if output == "json":
        click.echo(encode.dumps(result), nl=False)
    elif output == "markdown":
        rollouts = "".join(f"- {line}\n" for line in notes)
        click.echo(
            render.plan_markdown(result) + (f"\n#### Rollouts\n\n{rollouts}" if notes else ""), nl=False
        )
    else:
        if validated.diagnostics:
            report(validated, revision, "human")
        render.plan_text(out, result, show_unchanged=show_unchanged)
        if notes:
            out.print("\n[bold]Rollouts[/]")
        for line in notes:
            out.print(f"  {line}", soft_wrap=True, markup=False)
        if out_file:
            out.print(f"Saved the plan to {out_file}. Apply exactly it with: gitmesh apply {out_file}")
    sys.exit(2 if detailed_exitcode and result.has_changes else 0)


@cli.command()
@click.argument("plan_or_directory", required=False)
@click.option("--repo", help="Git repository: a local path or a URL.")
@click.option("--ref", default="HEAD", show_default=True, help="Branch, tag or commit to read.")
@click.option("--path", "subdir", default="", help="Directory of the manifests inside the repository.")
@namespace_option
@backend_options
@source_name_option
@click.option("--allow-empty", is_flag=True, help="Allow a revision that deletes every object gitmesh owns.")
@click.option("--force-conflicts", is_flag=True, help="Take over fields another field manager owns.")
@webhook_option
@reports_errors
def apply(
    plan_or_directory: str | None,
    repo: str | None,
    ref: str,
    subdir: str,
    namespace: str,
    target: BackendChoice,
    source_name: str,
    allow_empty: bool,
    force_conflicts: bool,
    webhook: str | None,
) -> None:
    """Apply a saved plan (a plan file), or plan and apply a directory or --repo revision."""
    settings = target.open()
    if plan_or_directory and Path(plan_or_directory).is_file():
        result = encode.loads(Path(plan_or_directory).read_text())
    else:
        revision = revision_of(plan_or_directory, repo, ref, subdir, namespace)
        validated = pipeline.check(revision, settings.objects)
        if not validated.ok:
            report(validated, revision, "human")
            settings.state.inventories.record_error(
                source_name, f"revision {revision.short} is invalid: {len(validated.errors)} error(s)"
            )
            sys.exit(1)
        from gitmesh.rollout import driver

        plan = pipeline.plan(revision, validated, settings, source_name)
        result = driver.prepare(plan, settings, time.time())
        render.plan_text(out, result)
    err.print(
        f"Applying {sum(c.manifest is not None for c in result.changes)} objects "
        f"and {result.counts[Action.DELETE]} deletes to {settings.objects.describe()}..."
    )
    from gitmesh.rollout import driver

    try:
        pipeline.apply(result, settings, allow_empty=allow_empty, force_conflicts=force_conflicts)
    except GitmeshError as e:
        settings.state.inventories.record_error(result.source, str(e))
        raise
    driver.begin(result, driver.webhook(webhook))
    out.print(f"[bold green]Applied.[/] {result.summary()}")
    for step in result.rollouts:
        out.print(f"Rollout of {step.split}: {step.note}", soft_wrap=True)


@cli.command()
@backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@reports_errors
def status(target: BackendChoice, output: str) -> None:
    """Each source's applied revision, object counts and last error; the sidecars gitmesh run serves."""
    settings = target.open()
    statuses = settings.state.inventories.status()
    records = {r.source: r for r in settings.state.records.all()}
    suspended = settings.state.records.suspended()
    # Sources the controller knows but that never applied anything (their first fetch failed, ...).
    known = {s.source for s in statuses}
    statuses += [SourceStatus(name) for name in sorted((records.keys() | suspended) - known)]
    if output == "json":
        rows = [
            {
                "source": s.source,
                "revision": s.revision,
                "ref": s.ref,
                "applied_at": s.applied_at.isoformat() if s.applied_at else None,
                "objects": dict(s.objects),
                "last_error": s.last_error or None,
                "last_error_at": s.last_error_at.isoformat() if s.last_error_at else None,
                "suspended": s.source in suspended,
                "controller": records[s.source].to_json() if s.source in records else None,
            }
            for s in statuses
        ]
        sidecars = settings.state.xds.latest()
        where = settings.objects.describe()
        click.echo(json.dumps({"backend": where, "sources": rows, "sidecars": sidecars}, indent=2))
        return
    if not statuses:
        out.print(f"Nothing applied yet to {settings.objects.describe()}.")
    for s in statuses:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(s.objects.items()))
        applied = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else "never"
        out.print(Text(f"source {s.source}", style="bold"))
        out.print(f"  revision    {s.revision or '-'} ({s.ref or '-'})", soft_wrap=True)
        out.print(f"  applied     {applied}")
        out.print(
            f"  objects     {sum(s.objects.values())}" + (f": {counts}" if counts else ""), soft_wrap=True
        )
        if s.last_error:
            when = s.last_error_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.last_error_at else ""
            out.print(
                Text("  last error  ", style="bold red") + Text(f"{s.last_error} ({when})"), soft_wrap=True
            )
        else:
            out.print("  last error  none")
        if s.source in suspended:
            out.print(Text("  suspended   yes (gitmesh resume to reconcile again)", style="yellow"))
        if s.source in records:
            _print_conditions(records[s.source])
    _print_xds(settings)


def _print_conditions(record: SourceRecord) -> None:
    """The controller's view: Flux-style conditions and the last attempted revision."""
    out.print(f"  attempted   {record.last_attempted or '-'}")
    for c in record.conditions:
        when = c.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        style = "green" if c.status == (c.type == "Ready") else "red"
        line = Text(f"  {c.type:<11} ") + Text(str(c.status), style=style) + Text(f" {c.reason}: {c.message}")
        out.print(line + Text(f" (since {when})", style="dim"), soft_wrap=True)


def _print_xds(settings: Settings) -> None:
    """What gitmesh run last reported of its sidecars: how many are connected, what they rejected."""
    report = settings.state.xds.latest()
    if not report:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["at"]))
    out.print(Text("sidecars", style="bold"))
    out.print(f"  connected   {len(report['proxies'])} (as of {when})")
    for nack in report["nacks"]:
        at = time.strftime("%H:%M:%S", time.gmtime(nack["at"]))
        what = f"{nack['type']} version {nack['version']} by {nack['proxy']} at {at}"
        if nack.get("patches"):  # reports from before EnvoyPatch have no such field
            what += f" (changed by {', '.join(nack['patches'])})"
        out.print(Text(f"  rejected    {what}: {nack['message']}", style="red"))
    for identity, expires in sorted(report.get("certificates", {}).items()):
        out.print(f"  certificate {identity} expires {expires}")


@install.command("crds")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The cluster's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@click.option("--print", "print_only", is_flag=True, help="Print the CRDs as YAML instead of applying them.")
@reports_errors
def install_crds(kubeconfig: str | None, context: str | None, print_only: bool) -> None:
    """The SMI CustomResourceDefinitions, rendered from gitmesh's schemas (one served version each)."""
    rendered = crds.render_all()
    if print_only:
        click.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)
        return
    from gitmesh.cluster import kube

    for name in kube.KubeObjects.connect(kubeconfig, context).install_crds(rendered):
        out.print(f"{name} established")


@cli.command()
@click.argument("code")
def explain(code: str) -> None:
    """Explain a diagnostic code, e.g. gitmesh explain GM104; gitmesh explain rollout: the rollout policy."""
    if code.lower() == "rollout":
        from gitmesh.plan.policy import DOC

        click.echo(DOC)
        return
    entry = CODES.get(code.upper())
    if entry is None:
        raise click.BadParameter(f"unknown code; known: {', '.join(CODES)}", param_hint="CODE")
    # Explanations quote patterns such as '[z-a]', which rich would take for markup.
    out.print(
        Text(entry.code, style="bold")
        + Text(f" ({entry.severity.value}): {entry.title}\n\n{entry.explanation}")
    )


def _rollout_notes(result: Plan, settings: Settings) -> list[str]:
    """The rollouts under way, and what this plan does to each (for gitmesh plan)."""
    from gitmesh.rollout import driver, render

    rollouts = driver.load(settings)
    lines = []
    for split, r in sorted(rollouts.items()):
        if r.phase.active:
            lines.append(
                f"Rollout under way: {split} {r.phase}, step {r.step + 1} of {len(r.steps)}, "
                f"now {render.weights_text(r.weights)} toward {render.weights_text(r.target)}"
            )
    return lines + [f"Rollout of {step.split}: this revision {step.note}" for step in result.rollouts]
