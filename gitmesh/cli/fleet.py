"""The fleet's commands, run against the hub: join (register a member and its agent's credentials),
status (every member's compliance), plan, and wave status|approve|abort (configurations rolled out
stage by stage)."""

from __future__ import annotations

import base64
import getpass
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.table import Table
from rich.text import Text

from gitmesh import durations
from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    confirm_write,
    emit,
    examples,
    out,
    output_option,
    reports_errors,
    snake_keys,
    target_header,
    yes_option,
)
from gitmesh.fleet import model
from gitmesh.fleet.hub import Hub
from gitmesh.fleet.wave import Abort, StageState, Wave, WaveState, WaveStatus
from gitmesh.plan.model import Action
from gitmesh.settings import Settings

if TYPE_CHECKING:
    from gitmesh.fleet.plan import MemberPlan

_STYLES = {
    model.State.COMPLIANT: "green",
    model.State.NON_COMPLIANT: "bold red",
    model.State.PENDING: "yellow",
    model.State.SUSPENDED: "blue",
    model.State.UNKNOWN: "magenta",
}


@cli.group()
@examples(
    "gitmesh fleet status --kubeconfig hub.kubeconfig",
    "gitmesh fleet join eu-1 -l region=eu --out a.kubeconfig",
    "gitmesh fleet wave status mesh",
)
def fleet() -> None:
    """A fleet of clusters: a hub, an agent in each member, compliance at a glance."""


def _hub(settings: Settings) -> Hub:
    if settings.cluster is None:
        raise click.UsageError("fleet commands work on the hub: give its --kubeconfig (or --context)")
    return Hub(settings.cluster)


@fleet.command("join")
@examples(
    "gitmesh fleet join eu-1 -l region=eu -l tier=edge --out eu-1.kubeconfig --kubeconfig hub.kubeconfig",
)
@click.argument("cluster")
@click.option("-l", "--label", "labels", multiple=True, help="A label KEY=VALUE (repeat for more).")
@click.option(
    "--unknown-after",
    default=model.DEFAULT_UNKNOWN_AFTER,
    show_default=True,
    help="Its state reads Unknown after this long without a report from its agent.",
)
@click.option(
    "--token-lifetime",
    default="24h",
    show_default=True,
    help="How long the agent's token in --out is valid (join again for a new one).",
)
@click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Write the agent's kubeconfig for the hub here (give it to gitmesh run --fleet-hub).",
)
@backend_options
@yes_option
@reports_errors
def join(
    cluster: str,
    labels: tuple[str, ...],
    unknown_after: str,
    token_lifetime: str,
    out_file: str,
    target: BackendChoice,
    yes: bool,
) -> None:
    """Register a member cluster in the hub (its FleetCluster, and a ServiceAccount that may read its
    assignment and write only its own status), and write its agent's kubeconfig."""
    from gitmesh.fleet.hub import member_objects

    parsed: dict[str, str] = {}
    for label in labels:
        key, eq, value = label.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{label!r}: expected KEY=VALUE", param_hint="--label")
        parsed[key] = value
    try:
        durations.seconds(unknown_after)
        lifetime = int(durations.seconds(token_lifetime))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    settings = target.open()
    target_header(settings)
    hub = _hub(settings)
    confirm_write(settings, f"Register cluster {cluster} in the fleet", yes)
    for line in hub.join(member_objects(cluster, parsed, unknown_after)):
        out.print(f"applied {line}")
    token = hub.agent_token(cluster, lifetime)
    written = Path(out_file)
    written.touch(mode=0o600)
    written.chmod(0o600)  # it holds a token: the owner's alone, also when it was there before
    written.write_text(_kubeconfig(hub, cluster, token))
    out.print(f"wrote the agent's kubeconfig to {out_file} (its token is valid for {token_lifetime})")


def _kubeconfig(hub: Hub, cluster: str, token: str) -> str:
    configuration = hub.client.api.configuration
    server: dict[str, Any] = {"server": hub.client.server}
    if configuration.ssl_ca_cert:
        server["certificate-authority-data"] = base64.b64encode(
            Path(configuration.ssl_ca_cert).read_bytes()
        ).decode()
    user = f"fleet-agent-{cluster}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fleet-hub", "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "fleet-hub", "context": {"cluster": "fleet-hub", "user": user}}],
        "current-context": "fleet-hub",
    }
    return yaml.safe_dump(config, sort_keys=False)


@fleet.command("status")
@examples(
    "gitmesh fleet status --kubeconfig hub.kubeconfig",
    "gitmesh fleet status eu-1",
    "gitmesh fleet status -o json",
)
@click.argument("cluster", required=False)
@backend_options
@output_option("json", "yaml")
@reports_errors
def status(cluster: str | None, target: BackendChoice, output: str) -> None:
    """Every member's compliance, read from the hub (writes nothing): Compliant, Non-Compliant,
    Pending, Suspended, or Unknown when its agent has not reported for longer than its unknownAfter.
    With CLUSTER, that member alone, with what its last reconcile did to each object."""
    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    now = datetime.now(UTC)
    hub = _hub(settings)
    raw = hub.clusters()
    members = [model.seen(obj, now) for obj in raw]
    configurations = hub.configurations()
    waves = [(c.name, c.wave_status) for c in configurations if c.wave_status is not None]
    selections: list[model.Selection] = []
    if cluster is not None:
        members = [m for m in members if m.name == cluster]
        if not members:
            raise click.BadParameter(f"no cluster {cluster!r} has joined the fleet", param_hint="CLUSTER")
    else:
        joined = [model.Member.of(obj) for obj in raw]
        selections = [model.selection(c, joined) for c in configurations]
    if output != "text":
        emit(
            "fleet-status",
            {
                "target": settings.objects.describe(),
                "clusters": [
                    {
                        "name": m.name,
                        "labels": dict(m.labels),
                        "compliance": m.state.value,
                        "reason": m.reason,
                        "last_report_time": m.last_report.isoformat() if m.last_report else None,
                        "configurations": snake_keys([dict(c) for c in m.configurations]),
                        "overlaps": snake_keys([dict(o) for o in m.overlaps]),
                    }
                    for m in members
                ],
                "waves": [
                    {"configuration": name, **snake_keys(w.to_json())} for name, w in waves if cluster is None
                ],
                "configurations": [s.to_json() for s in selections],
            },
            output,
        )
        return
    if not members:
        out.print("No cluster has joined the fleet.")
        _print_problems(selections)
        return
    rows = [
        [
            Text(m.name),
            Text(",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))),
            Text(m.state.value, style=_STYLES[m.state]),
            Text(
                ", ".join(
                    f"{c['name']}@{str(c.get('appliedRevision') or '-')[:12]}" for c in m.configurations
                )
                or "-"
            ),
            Text(f"{(now - m.last_report).total_seconds():.0f}s ago" if m.last_report else "never"),
            Text(m.reason),
        ]
        for m in members
    ]
    out.print(_columns(("CLUSTER", "LABELS", "COMPLIANCE", "CONFIGURATIONS", "LAST REPORT", "REASON"), rows))
    if cluster is not None:
        _print_objects(members[0])
        return
    for name, w in waves:
        # One line each: gitmesh fleet wave status has its stages.
        out.print(
            Text(f"\nWave of {name} toward {w.revision[:12]}: ", style="bold")
            + Text(w.state.value, style=_WAVE_STATE_STYLES[w.state])
            + Text(f"  {w.reason}")
        )
    _print_problems(selections)


def _print_problems(selections: Sequence[model.Selection]) -> None:
    """A line for each part of a configuration that reaches no cluster: it is applied nowhere."""
    for s in selections:
        for problem in s.problems:
            out.print(
                Text(f"\nConfiguration {s.configuration}: ", style="bold") + Text(problem, style="bold red")
            )


def _columns(header: Sequence[str], rows: Sequence[Sequence[Text]]) -> Text:
    """One-line rows as one Text, each column padded to its widest cell (the last not at all). Rich's
    Table measures every cell to wrap it, which over 1,000 members took longer than all the rest of
    ``fleet status``; a long reason here runs on, and the terminal wraps it."""
    lines = [[Text(h, style="bold") for h in header], *rows]
    widths = [max(len(line[i].plain) for line in lines) for i in range(len(header))]
    table = Text()
    for line in lines:
        for i, cell in enumerate(line):
            table.append_text(cell)
            if i < len(line) - 1:
                table.append(" " * (widths[i] - len(cell.plain) + 2))
        table.append("\n")
    table.rstrip()
    return table


def _print_objects(member: model.Seen) -> None:
    """Per configuration, what the member's last reconcile did to each object."""
    for c in member.configurations:
        results = c.get("objectResults") or []
        omitted = int(c.get("objectResultsOmitted") or 0)
        out.print(
            Text(f"\n{c['name']} ({c.get('path') or '/'}): {len(results) + omitted} object(s)", style="bold")
        )
        if not results:
            continue
        table = Table(box=None, pad_edge=False)
        for column in ("OBJECT", "RESULT", "WHY"):
            table.add_column(column)
        for r in results:
            failed = r["result"] in ("invalid", "refused", "claimed")
            table.add_row(
                r["object"], Text(r["result"], style="bold red" if failed else ""), Text(r.get("message", ""))
            )
        out.print(table)
        if omitted:
            out.print(f"... and {omitted} more (the first {len(results)} are kept, failures first)")


@fleet.command("plan")
@examples(
    "gitmesh fleet plan mesh --ref HEAD --repo . --kubeconfig hub.kubeconfig",
    "gitmesh fleet plan mesh --ref origin/main -o markdown",
)
@click.argument("configuration")
@click.option("--ref", default="HEAD", show_default=True, help="The revision to plan.")
@click.option("--repo", help="Read the revision here (default: the configuration's repository).")
@backend_options
@output_option("json", "yaml", "markdown")
@reports_errors
def plan(configuration: str, ref: str, repo: str | None, target: BackendChoice, output: str) -> None:
    """What a revision of a configuration would change on each member it selects, planned against the
    revision each member reports applied at its overlay's path (reads the hub; writes nothing)."""
    from gitmesh.fleet.plan import plan_members
    from gitmesh.kube import errors
    from gitmesh.sync.git import open_repo

    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    hub = _hub(settings)
    try:
        chosen = next(c for c in hub.configurations() if c.name == configuration)
    except StopIteration:
        raise click.BadParameter(f"the hub has no FleetConfiguration {configuration!r}") from None
    except errors.NotFound:
        raise click.UsageError("this cluster is no fleet hub: see gitmesh install fleet-hub") from None
    git_repo = open_repo(repo or chosen.repository)
    revision = git_repo.commit(ref).hexsha
    members = [(model.Member.of(obj), obj.get("status") or {}) for obj in hub.clusters()]
    plans = plan_members(git_repo, revision, chosen, members)
    problems = model.selection(chosen, [m for m, _ in members]).problems
    if output in ("json", "yaml"):
        emit(
            "fleet-plan",
            {
                "target": settings.objects.describe(),
                "configuration": configuration,
                "revision": revision,
                "clusters": [
                    {
                        "name": p.cluster,
                        "path": p.path,
                        "base_revision": p.base,
                        "valid": p.plan is not None,
                        "summary": p.summary,
                        "changes": [
                            {"action": c.action.value, "object": str(c.ref)}
                            for c in (p.plan.changes if p.plan else ())
                            if c.action is not Action.NOOP
                        ],
                        "splits": [
                            {
                                "split": str(s.split),
                                "service": s.service,
                                "backends": [
                                    {"service": b.service, "before": b.before, "after": b.after}
                                    for b in s.backends
                                ],
                            }
                            for s in p.splits
                        ],
                    }
                    for p in plans
                ],
                "problems": list(problems),
            },
            output,
        )
        return
    if output == "markdown":
        lines = [
            f"### gitmesh fleet plan for `{revision[:12]}` ({configuration})",
            "",
            "| cluster | path | from | changes | traffic |",
            "|---|---|---|---|---|",
        ]
        for p in plans:
            summary = p.summary if p.plan else f"**{p.summary}**"
            traffic = "<br>".join(_shares(p))
            lines.append(f"| {p.cluster} | `{p.path}` | `{(p.base or '-')[:12]}` | {summary} | {traffic} |")
        lines += ["", *(f"**{configuration}**: {problem}" for problem in problems)] if problems else []
        click.echo("\n".join(lines))
        return
    if not plans:
        out.print(
            Text(f"No cluster is selected by {configuration}: ", style="bold")
            + Text(problems[0], style="bold red")
        )
        return
    table = Table(box=None, pad_edge=False)
    for column in ("CLUSTER", "PATH", "FROM", "CHANGES", "TRAFFIC"):
        table.add_column(column)
    for p in plans:
        table.add_row(
            p.cluster,
            p.path,
            (p.base or "-")[:12],
            Text(p.summary, style="" if p.plan else "bold red"),
            "\n".join(_shares(p)) or "-",
        )
    out.print(Text(f"Revision {revision[:12]} of {configuration}", style="bold"))
    out.print(table)
    for problem in problems:
        out.print(Text(f"{configuration}: ", style="bold") + Text(problem, style="bold red"))


def _shares(p: MemberPlan) -> list[str]:
    return [
        f"{s.split}: " + ", ".join(f"{b.service} {_share(b.before)} -> {_share(b.after)}" for b in s.backends)
        for s in p.splits
    ]


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share:g}%"


@fleet.group("wave")
@examples(
    "gitmesh fleet wave status --kubeconfig hub.kubeconfig",
    "gitmesh fleet wave approve mesh eu",
    "gitmesh fleet wave abort mesh",
)
def wave_commands() -> None:
    """Configurations rolled out stage by stage: where each wave stands, approve a stage, abort one."""


_WAVE_STATE_STYLES = {
    WaveState.PROGRESSING: "yellow",
    WaveState.WAITING_APPROVAL: "blue",
    WaveState.HALTED: "bold red",
    WaveState.ABORTED: "bold red",
    WaveState.COMPLETED: "green",
}
_STAGE_STYLES = {
    StageState.PASSED: "green",
    StageState.ROLLED_BACK: "bold red",
    StageState.WAITING_APPROVAL: "blue",
    StageState.APPLYING: "yellow",
    StageState.VERIFYING: "yellow",
    StageState.PENDING: "",
}


def wave_json(configuration: model.Configuration, members: Sequence[model.Member]) -> dict[str, Any] | None:
    """A configuration's wave as ``fleet wave status -o json`` prints it: its stages with the
    clusters each holds now and what the stage's spec asks; None before the walker's first step."""
    w, spec = configuration.wave_status, configuration.wave
    if w is None or spec is None:
        return None
    declared = {s.name: (i, s) for i, s in enumerate(spec.stages)}
    selected = [m for m in members if configuration.selects(m)]

    def time(at: datetime | None) -> str | None:
        return at.isoformat().replace("+00:00", "Z") if at else None

    stages = []
    for s in w.stages:
        index, stage = declared.get(s.name, (None, None))
        stages.append(
            {
                "name": s.name,
                "clusters": [
                    m.name for m in selected if index is not None and spec.stage_of(m.labels) == index
                ],
                "revision": s.revision,
                "state": s.state.value,
                "reason": s.reason,
                "since": time(s.since),
                "started": time(s.started),
                "finished": time(s.finished),
                "waiting_for": s.waiting_for.value if s.waiting_for else None,
                "wait": stage.wait if stage else None,
                "approval": stage.approval if stage else None,
            }
        )
    return {
        "configuration": configuration.name,
        "revision": w.revision,
        "last_good": w.last_good,
        "state": w.state.value,
        "reason": w.reason,
        "abort": snake_keys(w.abort.to_json()) if w.abort else None,
        "stages": stages,
    }


@wave_commands.command("status")
@examples(
    "gitmesh fleet wave status --kubeconfig hub.kubeconfig",
    "gitmesh fleet wave status mesh -o json",
)
@click.argument("configuration", required=False)
@backend_options
@output_option("json", "yaml")
@reports_errors
def wave_status(configuration: str | None, target: BackendChoice, output: str) -> None:
    """Where each configuration's wave stands, read from the hub (writes nothing): the revision it
    brings, and per stage its clusters, state, when it started and finished, and what it waits for
    (its clusters, mesh health analysis, its wait, or an approval); why it halted or who aborted it."""
    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    hub = _hub(settings)
    configurations = [c for c in hub.configurations() if c.wave is not None]
    if configuration is not None:
        configurations = [c for c in configurations if c.name == configuration]
        if not configurations:
            raise click.BadParameter(
                f"the hub has no configuration {configuration!r} rolled out in waves",
                param_hint="CONFIGURATION",
            )
    members = [model.Member.of(obj) for obj in hub.clusters()]
    waves = [(c.name, wave_json(c, members)) for c in configurations]
    if output != "text":
        emit(
            "fleet-waves",
            {"target": settings.objects.describe(), "waves": [w for _, w in waves if w]},
            output,
        )
        return
    if not waves:
        out.print("No configuration is rolled out in waves.")
    for name, w in waves:
        if w is None:
            out.print(f"{name}: its wave has not been walked yet (by gitmesh run --fleet-view)")
            continue
        _print_wave(w)


def _print_wave(w: dict[str, Any]) -> None:
    state = WaveState(w["state"])
    out.print(
        Text(
            f"Wave of {w['configuration']} toward {w['revision'][:12]} (last good {w['last_good'][:12]}): ",
            style="bold",
        )
        + Text(state.value, style=_WAVE_STATE_STYLES[state])
        + Text(f"  {w['reason']}")
    )
    table = Table(box=None, pad_edge=False)
    for column in ("STAGE", "CLUSTERS", "STATE", "REVISION", "STARTED", "FINISHED", "WAITING FOR", "WHY"):
        table.add_column(column)
    for s in w["stages"]:
        waiting = s["waiting_for"] or "-"
        if waiting == "wait":
            waiting = f"wait ({s['wait']:g}s)"
        table.add_row(
            s["name"],
            ", ".join(s["clusters"]) or "-",
            Text(s["state"], style=_STAGE_STYLES[StageState(s["state"])]),
            s["revision"][:12],
            _clock(s["started"]),
            _clock(s["finished"]),
            waiting,
            Text(s["reason"]),
        )
    out.print(table)
    out.print()


def _clock(at: str | None) -> str:
    return at[11:19] if at else "-"  # HH:MM:SS of an ISO 8601 UTC time


def _under_way(hub: Hub, configuration: str) -> tuple[Wave, WaveStatus]:
    """A configuration's wave as declared and as it stands."""
    chosen = next((c for c in hub.configurations() if c.name == configuration), None)
    if chosen is None or chosen.wave is None or chosen.wave_status is None:
        raise click.BadParameter(
            f"the hub has no wave of {configuration!r} under way", param_hint="CONFIGURATION"
        )
    return chosen.wave, chosen.wave_status


@wave_commands.command("approve")
@examples("gitmesh fleet wave approve mesh eu --kubeconfig hub.kubeconfig")
@click.argument("configuration")
@click.argument("stage")
@backend_options
@yes_option
@reports_errors
def approve(configuration: str, stage: str, target: BackendChoice, yes: bool) -> None:
    """Approve the revision a configuration's wave brings for one of its stages (a stage with
    approval: true waits for it); the approval is written to the configuration, for that revision only."""
    settings = target.open()
    target_header(settings)
    hub = _hub(settings)
    declared, w = _under_way(hub, configuration)
    if stage not in [s.name for s in declared.stages]:
        names = ", ".join(s.name for s in declared.stages)
        raise click.BadParameter(
            f"{configuration} has no stage {stage!r} (its stages: {names})", param_hint="STAGE"
        )
    revision = w.revision
    confirm_write(settings, f"Approve {revision[:12]} of {configuration} for stage {stage}", yes)
    hub.approve(configuration, stage, revision)
    out.print(f"approved {revision[:12]} of {configuration} for stage {stage}")


@wave_commands.command("abort")
@examples("gitmesh fleet wave abort mesh --kubeconfig hub.kubeconfig")
@click.argument("configuration")
@backend_options
@yes_option
@reports_errors
def abort(configuration: str, target: BackendChoice, yes: bool) -> None:
    """Stop a configuration's wave where it is: stages not started never get its revision, the
    clusters of the stage under way go back to the last good one (as a failing stage's do), and the
    wave reads Aborted until a new revision starts another. Written to the configuration, for the
    revision under way only; the walker (gitmesh run --fleet-view) carries it out."""
    settings = target.open()
    target_header(settings)
    hub = _hub(settings)
    _, w = _under_way(hub, configuration)
    if w.state not in (WaveState.PROGRESSING, WaveState.WAITING_APPROVAL):
        raise click.BadParameter(
            f"the wave of {configuration} toward {w.revision[:12]} is {w.state.value}: nothing to abort",
            param_hint="CONFIGURATION",
        )
    confirm_write(settings, f"Abort the wave of {configuration} toward {w.revision[:12]}", yes)
    # Who, as the hub knows them; the local login where the hub cannot say.
    by = hub.user() or getpass.getuser()
    hub.abort(configuration, Abort(w.revision, by, datetime.now(UTC)))
    out.print(f"asked the walker to abort the wave of {configuration} toward {w.revision[:12]} (as {by})")
