"""Commands on manifests and what they change: validate, plan, apply, status, explain, install."""

from __future__ import annotations

import collections
import dataclasses
import difflib
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from gitmesh import pipeline
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
    report,
    reports_errors,
    revision_of,
    snake_keys,
    source_name_option,
    source_options,
    target_header,
    webhook_option,
    yes_option,
)
from gitmesh.controller import conditions
from gitmesh.controller.conditions import Result
from gitmesh.errors import GitmeshError, PlanError
from gitmesh.objects import ObjectRef
from gitmesh.plan import encode, render
from gitmesh.plan.model import Action, Plan
from gitmesh.plan.validate import Validated
from gitmesh.revision.diagnostics import CODES
from gitmesh.settings import Settings, embedded
from gitmesh.state import SourceStatus
from gitmesh.state.records import HISTORY_LENGTH, Reconcile, SourceRecord
from gitmesh.sync.git import Revision, open_repo, read_revision


@cli.command()
@examples(
    "gitmesh validate examples/repo",
    "gitmesh validate --repo . --ref main --path mesh -o github",
)
@source_options
@output_option("json", "yaml", "github")
@reports_errors
def validate(
    directory: str | None, repo: str | None, ref: str, subdir: str, namespace: str, output: str
) -> None:
    """Check manifests read from a directory or a commit: schemas and cross-object meaning. Exit 1 on
    any error."""
    if not directory and not repo and _huge(Path(".")):
        raise click.UsageError(
            f"the current directory holds more than {_HUGE} files; give the DIRECTORY of the manifests"
        )
    revision = revision_of(directory, repo, ref, subdir, namespace)
    validated = pipeline.check(revision)
    report(validated, revision, output, out)
    if output == "text":
        read = f"{len(revision.files)} files" + (
            f", {len(revision.builds)} kustomizations" if revision.builds else ""
        )
        out.print(f"{len(validated.desired)} objects valid in {read} ({revision.short})")
    sys.exit(0 if validated.ok else 1)


@cli.command()
@examples(
    "gitmesh plan --repo . --path examples/repo",
    "gitmesh plan examples/repo --out plan.json && gitmesh apply plan.json",
    "gitmesh plan --repo . --path mesh --base origin/main --head HEAD -o markdown",
)
@source_options
@backend_options
@source_name_option
@click.option("--base", help="Plan against another Git ref instead of the backend (needs --repo).")
@click.option("--head", help="With --base: the ref to plan (default: --ref).")
@output_option("json", "markdown")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Save the plan for gitmesh apply.")
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
    """Show what applying the manifests would change, and what it does to traffic (read from the
    target; writes nothing but --out)."""
    base_note = ""
    if base:
        if not repo:
            raise click.UsageError("--base needs --repo")
        git_repo = open_repo(repo)
        revision = read_revision(git_repo, head or ref, subdir, namespace)
        settings = embedded(":memory:")
        base_rev, base_checked, base_ref, base_note = _valid_base(git_repo, base, subdir, namespace)
        if base_note:
            err.print(Text("note: ", style="yellow") + Text(base_note))
        if base_checked.ok:
            pipeline.apply(pipeline.plan(base_rev, base_checked, settings, source_name), settings)
    else:
        revision = revision_of(directory, repo, ref, subdir, namespace)
        settings = target.open(read_only=not out_file)
        if output == "text":
            target_header(settings)
        _note_work_tree(directory, repo, ref)
    validated = pipeline.check(revision, None if base else settings.objects)
    if not validated.ok:
        report(validated, revision, "json" if output == "json" else "text")
        sys.exit(1)
    from gitmesh.rollout import driver

    # The plan as apply will write it: rollout steps included.
    result = driver.prepare(pipeline.plan(revision, validated, settings, source_name), settings, time.time())
    if not base and not repo:  # a directory: no commit names it, its content does
        result = dataclasses.replace(result, revision=revision.digest)
    if base:  # planned against the base revision, not against a backend: the header says which
        result = dataclasses.replace(result, backend=f"base {base_rev.short} ({base_ref})")
    held = pipeline.namespace_contents(result, settings)
    # With --base, against the base revision: what merging the pull request does to rollouts.
    notes = _rollout_notes(result, settings)
    if out_file:
        Path(out_file).write_text(encode.dumps(result))
    if output == "json":
        click.echo(encode.dumps(result), nl=False)
    elif output == "markdown":
        rollouts = "".join(f"- {line}\n" for line in notes)
        first = f"> **Warning:** {base_note}\n\n" if base_note else ""
        goes = "".join(
            f"- deleting Namespace/{ns} also deletes {', '.join(map(str, refs))}\n"
            for ns, refs in held.items()
        )
        click.echo(
            first
            + render.plan_markdown(result)
            + (f"\n#### Rollouts\n\n{rollouts}" if notes else "")
            + (f"\n#### Namespace contents\n\n{goes}" if goes else ""),
            nl=False,
        )
    else:
        if validated.diagnostics:
            report(validated, revision, "text")
        render.plan_text(out, result, show_unchanged=show_unchanged)
        for ns, refs in held.items():
            out.print(
                Text(f"Deleting Namespace/{ns} also deletes: {', '.join(map(str, refs))}", style="yellow"),
                soft_wrap=True,
            )
        if notes:
            out.print("\n[bold]Rollouts[/]")
        for line in notes:
            out.print(f"  {line}", soft_wrap=True, markup=False)
        if out_file:
            out.print(f"Saved the plan to {out_file}. Apply exactly it with: gitmesh apply {out_file}")
    sys.exit(2 if detailed_exitcode and result.has_changes else 0)


@cli.command()
@examples(
    "gitmesh apply --repo . --path examples/repo",
    "gitmesh apply plan.json",
    "gitmesh apply mesh/ --context prod -y",
)
@click.argument("plan_or_directory", required=False)
@click.option("--repo", help="Git repository: a local path or a URL.")
@click.option("--ref", default="HEAD", show_default=True, help="Branch, tag or commit to read.")
@click.option("--path", "subdir", default="", help="Directory of the manifests inside the repository.")
@namespace_option
@backend_options
@source_name_option
@click.option("--allow-empty", is_flag=True, help="Allow a revision that deletes every object gitmesh owns.")
@click.option("--force-conflicts", is_flag=True, help="Take over fields another field manager owns.")
@click.option(
    "--delete-namespace-contents",
    is_flag=True,
    help="Delete Namespaces even when they hold objects this revision does not delete.",
)
@yes_option
@output_option("json")
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
    delete_namespace_contents: bool,
    yes: bool,
    output: str,
    webhook: str | None,
) -> None:
    """Apply a saved plan (a plan file), or plan and apply a directory or --repo revision."""
    started = datetime.now(UTC)
    settings = target.open()
    if output == "text":
        target_header(settings)
    if plan_or_directory and Path(plan_or_directory).is_file():
        result = encode.loads(Path(plan_or_directory).read_text())
    else:
        revision = revision_of(plan_or_directory, repo, ref, subdir, namespace)
        _note_work_tree(plan_or_directory, repo, ref)
        validated = pipeline.check(revision, settings.objects)
        if not validated.ok:
            report(validated, revision, "text")
            message = f"revision {revision.short} is invalid: {len(validated.errors)} error(s)"
            settings.state.inventories.record_error(source_name, message)
            _record(
                settings,
                source_name,
                revision.sha or revision.digest,
                revision.ref,
                Result.INVALID,
                message,
                started,
            )
            sys.exit(1)
        from gitmesh.rollout import driver

        plan = pipeline.plan(revision, validated, settings, source_name)
        result = driver.prepare(plan, settings, time.time())
        if not repo:  # a directory: what was applied is named by its content, marked as no commit
            result = dataclasses.replace(result, revision=revision.digest)
            err.print(f"note: {plan_or_directory or '.'} is not a commit; recording it as {result.revision}")
        if output == "text":
            render.plan_text(out, result)
    for ns, refs in pipeline.namespace_contents(result, settings).items():
        err.print(Text(f"Deleting Namespace/{ns} also deletes: {', '.join(map(str, refs))}", style="yellow"))
    confirm_write(settings, f"Apply {result.summary()}", yes)
    err.print(
        f"Applying {sum(c.manifest is not None for c in result.changes)} objects "
        f"and {result.counts[Action.DELETE]} deletes to {settings.objects.describe()}..."
    )
    from gitmesh.rollout import driver

    try:
        pipeline.apply(
            result,
            settings,
            allow_empty=allow_empty,
            force_conflicts=force_conflicts,
            delete_namespace_contents=delete_namespace_contents,
        )
    except GitmeshError as e:
        settings.state.inventories.record_error(result.source, str(e))
        refused = Result.REFUSED if isinstance(e, PlanError) else Result.FAILED
        _record(settings, result.source, result.revision or "", result.ref, refused, str(e), started)
        raise
    done = Result.APPLIED if result.has_changes else Result.UNCHANGED
    _record(settings, result.source, result.revision or "", result.ref, done, result.summary(), started)
    driver.begin(result, driver.webhook(webhook))
    if output == "json":
        counts = {a.value.replace("-", "_"): n for a, n in result.counts.items()}
        emit(
            "apply",
            {
                "target": settings.objects.describe(),
                "source": result.source,
                "revision": result.revision,
                "ref": result.ref,
                "counts": counts,
                "rollouts": [{"split": r.split, "note": r.note} for r in result.rollouts],
            },
            output,
        )
        return
    out.print(f"[bold green]Applied.[/] {result.summary()}")
    for step in result.rollouts:
        out.print(f"Rollout of {step.split}: {step.note}", soft_wrap=True)


@cli.command()
@examples("gitmesh status", "gitmesh status --context prod -o json", "gitmesh status -n bookstore")
@backend_options
@click.option("-n", "--namespace", help="Count only each source's objects in this namespace.")
@output_option("json", "yaml")
@reports_errors
def status(target: BackendChoice, namespace: str | None, output: str) -> None:
    """Each source's applied revision, object counts and last error; the sidecars gitmesh run serves
    (read from the target; writes nothing)."""
    settings = target.open(read_only=True)
    statuses = settings.state.inventories.status()
    if namespace is not None:
        statuses = [
            dataclasses.replace(s, objects=_counts(settings.state.inventories.get(s.source), namespace))
            for s in statuses
        ]
    records = {r.source: r for r in settings.state.records.all()}
    suspended = settings.state.records.suspended()
    # Sources the controller knows but that never applied anything (their first fetch failed, ...).
    known = {s.source for s in statuses}
    statuses += [SourceStatus(name) for name in sorted((records.keys() | suspended) - known)]
    if output != "text":
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
                "controller": snake_keys(records[s.source].to_json()) if s.source in records else None,
            }
            for s in statuses
        ]
        sidecars = settings.state.xds.latest()
        where = {"target": settings.objects.describe(), "namespace": namespace}
        routes = [
            {
                "route": str(r.route),
                "parent": r.parent,
                "accepted": r.accepted,
                "accepted_reason": r.accepted_reason,
                "resolved_refs": r.resolved,
                "resolved_refs_reason": r.resolved_reason,
                "message": r.message,
            }
            for r in pipeline.live_route_statuses(settings)
        ]
        emit("status", {**where, "sources": rows, "routes": routes, "sidecars": sidecars}, output)
        return
    target_header(settings)
    if not statuses:
        out.print(f"Nothing applied yet to {settings.objects.describe()}.")
    for s in statuses:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(s.objects.items()))
        applied = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else "never"
        out.print(Text(f"source {s.source}", style="bold"))
        commit = " (not a commit)" if s.revision and s.revision.startswith("sha256:") else ""
        out.print(f"  revision    {s.revision or '-'} ({s.ref or '-'}){commit}", soft_wrap=True)
        out.print(f"  applied     {applied}")
        label = "objects" + (f" in {namespace}" if namespace is not None else "")
        total = sum(s.objects.values())
        out.print(f"  {label:<11} {total}" + (f": {counts}" if counts else ""), soft_wrap=True)
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
    _print_routes(settings)
    _print_xds(settings)


def _print_routes(settings: Settings) -> None:
    """What gitmesh wrote in the status of the routes it applied, per Service parent."""
    routes = pipeline.live_route_statuses(settings)
    if routes:
        out.print(Text("routes", style="bold"))
    for r in routes:
        out.print(
            Text(f"  {render.route_line(r)}", style="green" if r.accepted and r.resolved else "red"),
            soft_wrap=True,
        )


def _record(
    settings: Settings, source: str, revision: str, ref: str, result: Result, summary: str, started: datetime
) -> None:
    """An apply by hand goes in the source's record as the controller's do: history and conditions."""
    record = next((r for r in settings.state.records.all() if r.source == source), SourceRecord(source))
    now = datetime.now(UTC)
    entry = Reconcile(revision, ref, started, (now - started).total_seconds(), result.value, summary, "cli")
    settings.state.records.save(
        dataclasses.replace(
            record,
            conditions=conditions.finished(
                record.conditions, result, f"{ref}@{revision[:19]}: {summary}", now
            ),
            last_applied=revision if result.succeeded else record.last_applied,
            last_attempted=revision,
            history=(entry, *record.history)[:HISTORY_LENGTH],
        )
    )


def _print_conditions(record: SourceRecord) -> None:
    """The controller's view: Flux-style conditions and the last attempted revision."""
    out.print(f"  attempted   {record.last_attempted or '-'}")
    for c in record.conditions:
        when = c.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        style = "green" if c.status == (c.type == "Ready") else "red"
        line = Text(f"  {c.type:<11} ") + Text(str(c.status), style=style) + Text(f" {c.reason}: {c.message}")
        out.print(line + Text(f" (since {when})", style="dim"), soft_wrap=True)


def _counts(inventory: Mapping[ObjectRef, Any], namespace: str) -> dict[str, int]:
    return dict(collections.Counter(ref.kind for ref in inventory if ref.namespace == namespace))


def _print_xds(settings: Settings) -> None:
    """What gitmesh run last reported of its sidecars: how many are connected, what they rejected."""
    report = settings.state.xds.latest()
    if not report:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["at"]))
    out.print(Text("sidecars", style="bold"))
    replicas = len(report.get("replicas", ())) or 1
    to = f" to {replicas} replicas" if replicas > 1 else ""
    out.print(f"  connected   {len(report['proxies'])}{to} (as of {when})")
    for nack in report["nacks"]:
        at = time.strftime("%H:%M:%S", time.gmtime(nack["at"]))
        what = f"{nack['type']} version {nack['version']} by {nack['proxy']} at {at}"
        if nack.get("patches"):  # reports from before EnvoyPatch have no such field
            what += f" (changed by {', '.join(nack['patches'])})"
        out.print(Text(f"  rejected    {what}: {nack['message']}", style="red"))
    for identity, expires in sorted(report.get("certificates", {}).items()):
        out.print(f"  certificate {identity} expires {expires}")
    provider = report.get("certificate_provider") or {}  # reports of older versions have none
    if provider.get("problem"):
        out.print(Text(f"  certificates not renewed: {provider['problem']}", style="red"), soft_wrap=True)
    if provider.get("refused"):
        out.print(Text(f"  certificate settings refused: {provider['refused']}", style="red"), soft_wrap=True)


@cli.command()
@examples("gitmesh explain GM104", "gitmesh explain rollout", "gitmesh explain GM104 -o json")
@click.argument("code")
@output_option("json", "yaml")
def explain(code: str, output: str) -> None:
    """Explain a diagnostic code (GMnnn), or with "rollout" the rollout policy."""
    if code.lower() == "rollout":
        from gitmesh.plan.policy import DOC

        click.echo(DOC)
        return
    entry = CODES.get(code.upper())
    if entry is None:
        near = difflib.get_close_matches(code.upper(), CODES, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise click.BadParameter(f"unknown code; {hint}known: {', '.join(CODES)}", param_hint="CODE")
    if output != "text":
        emit(
            "explanation",
            {
                "code": entry.code,
                "severity": entry.severity.value,
                "title": entry.title,
                "explanation": entry.explanation,
            },
            output,
        )
        return
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


_HUGE = 2000  # files under the current directory beyond which validate asks for a path


def _huge(root: Path) -> bool:
    seen = 0
    for _, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        seen += len(filenames)
        if seen > _HUGE:
            return True
    return False


def _note_work_tree(directory: str | None, repo: str | None, ref: str) -> None:
    """A commit of a local work tree with uncommitted changes: say that they are not in it."""
    if directory or not repo or ref != "HEAD" or not Path(repo).is_dir():
        return
    changed = subprocess.run(
        ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if changed.returncode == 0 and changed.stdout.strip():
        err.print(
            Text("note: ", style="yellow")
            + Text(f"{repo} has uncommitted changes; this reads its commit HEAD, without them")
        )


_BASE_LOOKBACK = 20  # commits before an invalid base to look for its last valid state


def _valid_base(
    git_repo: Any, base: str, subdir: str, namespace: str
) -> tuple[Revision, Validated, str, str]:
    """The revision to plan against, its ref and, when the base itself is invalid, a note of what was
    used instead: its last valid state, or (with none) the invalid base, which plans as an empty mesh."""
    base_rev = read_revision(git_repo, base, subdir, namespace)
    checked = pipeline.check(base_rev)
    if checked.ok:
        return base_rev, checked, base, ""
    for back in range(1, _BASE_LOOKBACK + 1):
        try:
            older = read_revision(git_repo, f"{base}~{back}", subdir, namespace)
        except GitmeshError:  # the history ends
            break
        older_checked = pipeline.check(older)
        if older_checked.ok:
            return (
                older,
                older_checked,
                f"{base}~{back}",
                f"the base {base} ({base_rev.short}) is invalid ({len(checked.errors)} error(s)); "
                f"planned against its last valid state, {older.short} ({base}~{back})",
            )
    return (
        base_rev,
        checked,
        base,
        f"the base {base} ({base_rev.short}) is invalid ({len(checked.errors)} error(s)) and has no valid "
        "state before it; planned against an empty mesh",
    )
